"""A worker's output folder on object storage (``gs://`` in the cloud; any pyarrow URI).

On the cloud training group the launcher stages ``train_config.json`` and ``preprocessing.json``
under a ``gs://`` prefix and passes it as ``--out``. Each worker trains in a local scratch folder and
mirrors what must outlive the VM: checkpoints (the ``.pt`` first, its sidecar last, so the sidecar
stays the commit marker and a node restarted elsewhere resumes from it), then the model folder
(``meta.json`` last) and the result. Object writes on GCS are atomic, so no temp names are needed there.
"""

from __future__ import annotations

import contextlib
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from tenfold.fsio import filesystem_from_uri, make_dirs, write_file_atomically


def is_remote(location: str) -> bool:
    return "://" in location


class RemoteDir:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem_from_uri(self.uri)

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(name)) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        make_dirs(self.fs, posixpath.dirname(path))
        # A hidden tmp moved over the name on a local disk (removed when the write fails: a full disk left every
        # try's half file behind), one object write on GCS.
        write_file_atomically(self.fs, path, data)

    def upload(self, local: Path, name: str) -> None:
        self.write_bytes(name, local.read_bytes())

    def list(self, folder: str) -> list[str]:
        """Names of the files directly under ``folder``."""
        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self._path(name))

    def download_folder(self, folder: str, local: Path) -> int:
        local.mkdir(parents=True, exist_ok=True)
        count = 0
        for name in self.list(folder):
            data = self.read_bytes(f"{folder}/{name}")
            if data is not None and ".tmp-" not in name:
                (local / name).write_bytes(data)
                count += 1
        return count


def read_text(location: str) -> str:
    """A file's text from a local path or a URI."""
    if not is_remote(location):
        return Path(location).read_text()
    fs, path = filesystem_from_uri(location)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read()).decode()
