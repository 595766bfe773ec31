"""One service account per component, each granted only what it needs, on the narrowest resource GCP allows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cdktn_provider_google.project_iam_custom_role import ProjectIamCustomRole
from cdktn_provider_google.project_iam_member import ProjectIamMember
from cdktn_provider_google.pubsub_subscription_iam_member import PubsubSubscriptionIamMember
from cdktn_provider_google.pubsub_topic_iam_member import PubsubTopicIamMember
from cdktn_provider_google.secret_manager_secret_iam_member import SecretManagerSecretIamMember
from cdktn_provider_google.service_account import ServiceAccount
from cdktn_provider_google.service_account_iam_member import ServiceAccountIamMember
from cdktn_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from constructs import Construct

# Basic (primitive) roles are never granted: they span every service in the project.
PRIMITIVE_ROLES = frozenset({"roles/owner", "roles/editor", "roles/viewer"})


@dataclass(frozen=True)
class AccountSpec:
    component: str  # construct id: serving, training, ...
    account_id: str
    project_roles: Sequence[str] = ()  # only roles GCP grants at project level alone (e.g. logging)
    bucket_roles: Sequence[tuple[str, str]] = ()  # (bucket name, role)
    # (bucket name, role, object-name prefix): the role on the objects under that prefix only (an IAM
    # condition; the buckets have uniform bucket-level access). Listing is a bucket-level call it never allows.
    prefix_roles: Sequence[tuple[str, str, str]] = ()
    # (bucket name, role, folders): the role on the objects under those folders and on list calls within them,
    # nothing else of the bucket (a condition on the object name, and on the prefix of a list call).
    folder_roles: Sequence[tuple[str, str, Sequence[str]]] = ()
    topic_roles: Sequence[tuple[str, str]] = ()  # (topic name, role)
    subscription_roles: Sequence[tuple[str, str]] = ()  # (subscription name, role)
    secret_roles: Sequence[tuple[str, str]] = ()  # (Secret Manager secret id, role): on that one secret
    act_as: Sequence[str] = ()  # components whose service account this one may run workloads as
    custom_roles: Sequence[str] = ()  # ids of CustomRoleSpec


def object_prefix_condition(bucket: str, prefix: str) -> dict[str, str]:
    """The IAM condition that limits a bucket grant to the objects whose names start with ``prefix``."""
    folder = prefix.strip("/") + "/"
    return {
        "title": f"only {folder}"[:100],
        "description": f"objects of {bucket} under {folder}",
        "expression": (f'resource.type == "storage.googleapis.com/Object" && '
                       f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{folder}")'),
    }


# IAM's limits on conditions: logical operators (&&, ||) in one expression, and bindings of one role and member
# that differ only by their condition (https://cloud.google.com/iam/docs/conditions-overview#limitations).
MAX_CONDITION_OPERATORS = 12
MAX_CONDITIONAL_BINDINGS = 20


def logical_operators(expression: str) -> int:
    return expression.count("&&") + expression.count("||")


def folders_condition(bucket: str, folders: Sequence[str]) -> dict[str, str]:
    """The IAM condition that limits an object role on ``bucket`` to the objects under ``folders`` and to list
    calls whose prefix is within one of them (``objects.list`` is checked on the bucket, with the call's prefix
    as ``storage.googleapis.com/objectListPrefix``)."""
    names = [f.strip("/") + "/" for f in folders]
    # The folder's own name without its '/' too (an object of that exact name, a list call with that prefix):
    # clients probe a directory that way (pyarrow's GCS filesystem), and a 403 there reads as an error, not as
    # "not found"; no other object of the bucket starts with it unless it is in the folder or is its name.
    objects = " || ".join(
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{n}") || '
        f'resource.name == "projects/_/buckets/{bucket}/objects/{n[:-1]}"' for n in names)
    listed = " || ".join(
        f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{n}") || '
        f'api.getAttribute("storage.googleapis.com/objectListPrefix", "") == "{n[:-1]}"' for n in names)
    expression = (f'(resource.type == "storage.googleapis.com/Object" && ({objects})) || '
                  f'(resource.type == "storage.googleapis.com/Bucket" && ({listed}))')
    if logical_operators(expression) > MAX_CONDITION_OPERATORS:
        raise ValueError(f"the condition on {bucket} for {', '.join(names)} has {logical_operators(expression)} "
                         f"logical operators, more than IAM's {MAX_CONDITION_OPERATORS}: grant one folder per binding")
    return {
        "title": f"only {', '.join(names)}"[:100],
        "description": f"the objects of {bucket} under {', '.join(names)}, and listing them"[:256],
        "expression": expression,
    }


@dataclass(frozen=True)
class CustomRoleSpec:
    role_id: str
    title: str
    permissions: Sequence[str]


@dataclass(frozen=True)
class IamProps:
    project: str
    accounts: Sequence[AccountSpec]
    custom_roles: Sequence[CustomRoleSpec] = field(default_factory=tuple)


class Iam(Construct):
    def __init__(self, scope: Construct, id_: str, props: IamProps) -> None:
        super().__init__(scope, id_)
        self.accounts: dict[str, ServiceAccount] = {}
        # (component, role) -> its project-wide grant: a resource that needs a grant in place before it is created
        # (Composer needs roles/composer.worker on its account) names it in depends_on.
        self.project_grants: dict[tuple[str, str], ProjectIamMember] = {}
        roles = {
            r.role_id: ProjectIamCustomRole(self, f"role-{r.role_id}", role_id=r.role_id, title=r.title,
                                            permissions=list(r.permissions), project=props.project)
            for r in props.custom_roles
        }
        for spec in props.accounts:
            bad = PRIMITIVE_ROLES.intersection(spec.project_roles)
            if bad:
                raise ValueError(f"{spec.component}: primitive roles {sorted(bad)} are not allowed; grant predefined roles")
            sa = ServiceAccount(self, spec.component, account_id=spec.account_id,
                                display_name=f"Tenfold {spec.component} ({spec.account_id})", project=props.project)
            self.accounts[spec.component] = sa
            member = sa.member
            for role in spec.project_roles:
                self.project_grants[(spec.component, role)] = ProjectIamMember(
                    self, f"{spec.component}-{role.split('/')[-1]}", project=props.project, role=role, member=member)
            for rid in spec.custom_roles:
                ProjectIamMember(self, f"{spec.component}-custom-{rid}", project=props.project, role=roles[rid].id, member=member)
            for bucket, role in spec.bucket_roles:
                StorageBucketIamMember(self, f"{spec.component}-{bucket}-{role.split('/')[-1]}", bucket=bucket, role=role, member=member)
            for bucket, role, prefix in spec.prefix_roles:
                StorageBucketIamMember(
                    self, f"{spec.component}-{bucket}-{prefix.strip('/').replace('/', '-')}-{role.split('/')[-1]}",
                    bucket=bucket, role=role, member=member, condition=object_prefix_condition(bucket, prefix))
            for bucket, role, folders in spec.folder_roles:
                # One binding per folder: IAM refuses a condition with more than 12 logical operators, and one
                # condition over every folder had 37 (the serving account's 9 tables); 20 bindings of one role and
                # member is IAM's other bound.
                if len(folders) > MAX_CONDITIONAL_BINDINGS:
                    raise ValueError(f"{spec.component}: {len(folders)} folders of {bucket}, more than IAM's "
                                     f"{MAX_CONDITIONAL_BINDINGS} conditional bindings of one role and member")
                for folder in folders:
                    StorageBucketIamMember(
                        self, f"{spec.component}-{bucket}-{folder.strip('/').replace('/', '-')}-{role.split('/')[-1]}",
                        bucket=bucket, role=role, member=member, condition=folders_condition(bucket, [folder]))
            for topic, role in spec.topic_roles:
                PubsubTopicIamMember(self, f"{spec.component}-{topic}-{role.split('/')[-1]}", topic=topic, role=role, member=member)
            for sub, role in spec.subscription_roles:
                PubsubSubscriptionIamMember(self, f"{spec.component}-{sub}-{role.split('/')[-1]}", subscription=sub, role=role, member=member)
            for secret, role in spec.secret_roles:
                SecretManagerSecretIamMember(self, f"{spec.component}-{secret}-{role.split('/')[-1]}", project=props.project,
                                             secret_id=secret, role=role, member=member)
        for spec in props.accounts:
            for target in spec.act_as:
                # Scoped to the one service account, never iam.serviceAccountUser on the project.
                ServiceAccountIamMember(self, f"{spec.component}-actas-{target}", service_account_id=self.accounts[target].name,
                                        role="roles/iam.serviceAccountUser", member=self.accounts[spec.component].member)
