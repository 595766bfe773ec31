"""A KMS key ring and symmetric keys with rotation; the keys can never be destroyed by a deploy."""

from __future__ import annotations

from dataclasses import dataclass

from cdktn_provider_google.kms_crypto_key import KmsCryptoKey
from cdktn_provider_google.kms_key_ring import KmsKeyRing
from constructs import Construct


@dataclass(frozen=True)
class KmsProps:
    key_ring_name: str
    location: str
    key_names: dict[str, str]  # construct id -> key name
    rotation_period: str


class Kms(Construct):
    def __init__(self, scope: Construct, id_: str, props: KmsProps) -> None:
        super().__init__(scope, id_)
        # Destroying a key ring or key makes every object encrypted with it unreadable forever.
        self.key_ring = KmsKeyRing(self, "key-ring", name=props.key_ring_name, location=props.location,
                                   lifecycle={"prevent_destroy": True})
        self.keys: dict[str, KmsCryptoKey] = {
            cid: KmsCryptoKey(self, cid, name=name, key_ring=self.key_ring.id, rotation_period=props.rotation_period,
                              purpose="ENCRYPT_DECRYPT", lifecycle={"prevent_destroy": True})
            for cid, name in props.key_names.items()
        }
