"""Where a dataset lives (``data.root``) versus where this process reads it.

Pipeline steps run in pods that share nothing but artifacts, buckets and declared volumes. So a split
manifest never records a path that only exists on the machine that wrote it: it records the dataset's
root as the user gave it (a ``gs://`` prefix, or a folder on a volume every step mounts, such as a PVC
or a Cloud Storage FUSE mount) and each image's path relative to that root. A step that reads the split
asks :meth:`DataRoot.localize` for local paths, which stages just those files from ``gs://`` into its own
per-pod cache (in parallel; already-staged files are reused) and is a plain join for a local root.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autoft.errors import ConfigError, DataError
from autoft.urls import is_gcs


@dataclass(frozen=True)
class DataRoot:
    """A dataset root: ``uri`` is what manifests record, ``local`` where this process finds its files."""

    uri: str
    local: Path

    @property
    def remote(self) -> bool:
        return is_gcs(self.uri)

    @classmethod
    def of(cls, uri: str) -> DataRoot:
        """The root a manifest recorded, as seen from this process (nothing is downloaded yet)."""
        if is_gcs(uri):
            from autoft.storage import staging_folder

            return cls(uri.rstrip("/"), staging_folder(uri))
        return cls(uri, Path(uri))

    def relative(self, path: str | Path, what: str) -> str:
        """``path`` (a local file under this root) as the root-relative POSIX path manifests record.

        A file outside a local root keeps its absolute path (it lives on a volume that is not the root's,
        e.g. a CSV row allowed outside it); outside a gs:// root there is no way back to a URI: an error.
        """
        local = Path(path)
        try:
            return local.resolve().relative_to(self.local.resolve()).as_posix()
        except ValueError:
            if self.remote:
                raise DataError(f"{what}: {local} is not under the staged copy of {self.uri}") from None
            return str(local)

    def localize(self, relatives: Sequence[str], progress: bool = False) -> list[str]:
        """Local paths of these root-relative files; from gs:// only the ones missing here are fetched."""
        for relative in relatives:
            parts = PurePosixPath(relative).parts
            if self.remote and (relative.startswith("/") or ".." in parts):
                raise DataError(f"manifest path {relative!r} escapes its root {self.uri}")
        if self.remote and relatives:
            from autoft.storage import stage_files

            stage_files(self.uri, relatives, progress=progress)
        return [str(self.local / relative) for relative in relatives]


def resolve_root(root: str, dataset: str, how_to_stage: str) -> DataRoot:
    """``data.root`` for a builder: a local folder as is; a gs:// root staged to this machine first.

    The prepare step lists and checks the data, so it stages the whole prefix (incrementally, cached);
    the steps after it fetch only the files their splits name (:meth:`DataRoot.localize`). For data too
    large to copy per pod, mount the bucket instead (docs/deploy.md: Cloud Storage FUSE) and give that
    mount as a local root.
    """
    if not root:
        raise ConfigError(f"data.root is empty; the {dataset!r} dataset needs the folder that holds it. {how_to_stage}")
    if is_gcs(root):
        # Imported here: google-cloud-storage is only needed for gs:// roots.
        from autoft.storage import stage_to_local

        return DataRoot(root.rstrip("/"), Path(stage_to_local(root)))
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{dataset}: data.root {root!r} is not a folder (looked at {path.absolute()}). {how_to_stage}")
    return DataRoot(str(path.resolve()), path.resolve())
