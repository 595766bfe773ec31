"""The CDK Terrain app: synthesizes the data and platform stacks of dev and prod in one process.

Run from the repository root: ``.venv/bin/python -m infra.main`` (what ``make synth`` runs, and what
``cdktn synth`` and ``cdktf synth`` run from infra/ via cdktf.json); deploy one stack with
``cdktn deploy tenfold-dev-data`` from infra/. Names come from tenfold settings; set
``TENFOLD_PROJECT_ID`` to your project before deploying. The reusable pieces live in
``infra/components`` (a name that does not shadow the ``constructs`` library), so no path editing is needed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from infra.stacks import build_app
from tenfold.config import settings_refusal

# Node's errno codes for a file or folder that cannot be written, as jsii's RuntimeError begins with them: App()'s
# "ENOTDIR: not a directory, mkdir '<dir>'", synth()'s "Error: ENOTDIR: not a directory, mkdir '<dir>/stacks/<stack>'"
# or, on a full disk, "ENOSPC: no space left on device, write".
_WRITE_ERROR = re.compile(r"^(?:Error: )?((?:ENOSPC|EDQUOT|EACCES|EPERM|EROFS|ENOENT|ENOTDIR|EISDIR|EEXIST): .*)")


def main() -> int:
    # The CLIs pass their output folder in CDKTF_OUTDIR, relative to infra/ where they run and read its manifest; but
    # cdktf.json's app runs from the repository root (`cd ..`), so a relative one was written there and `cdktn deploy`
    # found no manifest, or an older `make synth`'s. Resolved against infra/ (an absolute one stays as it is); run by
    # hand, write where the CLIs would.
    outdir = str(Path(__file__).parent / (os.environ.get("CDKTF_OUTDIR") or "cdktf.out"))
    try:
        try:
            app = build_app(outdir=outdir)
        except ValueError as exc:
            # A TENFOLD_* value that does not parse (pydantic's ValidationError and SettingsError are ValueErrors), or
            # a setting a stack refuses: one line naming it and exit code 2 (bad usage), as the tenfold commands end,
            # not a traceback that `make synth` and `cdktn synth` would print whole. Nothing is written: synthesis
            # never ran.
            print(settings_refusal(exc), file=sys.stderr)
            return 2
        app.synth()
    except RuntimeError as exc:
        # App(outdir=...) creates the folder and synth() writes into it, both in Node: a folder that cannot be written
        # (full disk, read-only, no permission, a path through a regular file) reached Python as jsii's RuntimeError,
        # printed as a JavaScript stack and a Python traceback. One line naming the folder and Node's cause instead;
        # any other RuntimeError is a fault of the app and keeps its traceback.
        written = _WRITE_ERROR.match(str(exc).strip().split("\n", 1)[0])
        if written is None:
            raise
        print(f"error: cannot write the synthesized stacks to {outdir}: {written[1]}", file=sys.stderr)
        return 2
    if not os.environ.get("TENFOLD_PROJECT_ID"):
        # Synthesized for the placeholder projects (tenfold-<env>-project), to read: deployed, its state would go to a
        # bucket named after a project that is not yours, a global name anyone could have created.
        print("warning: TENFOLD_PROJECT_ID is not set: the stacks were synthesized for a placeholder project of "
              "each environment (`tenfold config get project_id --env dev` names it), to read, not to deploy: export "
              "TENFOLD_PROJECT_ID=<your project id> before `cdktn deploy`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
