"""Versioning: the manifests, tags and publishing of a store directory, and cleanup.

One manifest per published version lives in ``versions/``; a version is published by
hard-linking its manifest into place, which either succeeds whole or fails because
another writer took the number. Tags in ``tags/`` name versions and pin them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ._errors import CommitConflict, SchemaError, StoreError, VersionNotFound


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: float
    operation: str
    events: int
    segments: int
    bytes: int
    tags: tuple[str, ...] = ()
    watermark: int | None = None  # two-tier stores: every arrival before it is in this version


class VersionLog:
    """The versioned side of a store directory (never its data files' contents)."""

    def __init__(self, root: Path):
        self.root = root
        self.versions_dir = root / "versions"
        self.tags_dir = root / "tags"

    def manifest_path(self, version: int) -> Path:
        return self.versions_dir / f"{version:08d}.json"

    @property
    def latest(self) -> int:
        names = [n for n in os.listdir(self.versions_dir) if n.endswith(".json")]
        return max((int(n[:-5]) for n in names), default=0)

    def resolve(self, version: int | str | None) -> int:
        """A version number from a number, a numeric string, a tag, or None (the latest)."""
        if version is None:
            return self.latest
        if isinstance(version, str) and not version.isdigit():
            tag = self.tags_dir / f"{version}.json"
            if not tag.is_file():
                raise VersionNotFound(f"no tag {version!r} in {self.root}; tags: {sorted(self.tags())}")
            return json.loads(tag.read_text())["version"]
        number = int(version)
        if number != 0 and not self.manifest_path(number).is_file():
            raise VersionNotFound(f"version {number} is not kept in {self.root}; latest is {self.latest}")
        return number

    def manifest(self, version: int) -> dict:
        path = self.manifest_path(version)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise VersionNotFound(f"version {version} is not kept in {self.root}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"the manifest {path} is corrupt ({exc}); restore it from a backup "
                             "or remove it to fall back to the previous version") from exc

    def infos(self) -> list[VersionInfo]:
        tags: dict[int, list[str]] = {}
        for name, v in self.tags().items():
            tags.setdefault(v, []).append(name)
        out = []
        for n in sorted(os.listdir(self.versions_dir)):
            if not n.endswith(".json"):
                continue
            m = json.loads((self.versions_dir / n).read_text())
            out.append(VersionInfo(
                m["version"], m["created_at"], m["operation"], m["events"], len(m["segments"]),
                sum(s["bytes"] for s in m["segments"]), tuple(sorted(tags.get(m["version"], []))),
                m.get("watermark"),
            ))
        return out

    # ------------------------------------------------------------ tags

    def tags(self) -> dict[str, int]:
        return {p.stem: json.loads(p.read_text())["version"] for p in self.tags_dir.glob("*.json")}

    def tag(self, name: str, version: int) -> None:
        if not name or name.isdigit() or "/" in name or name.startswith("."):
            raise SchemaError(f"tag name {name!r} must be non-numeric and a plain file name")
        tmp = self.tags_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"version": version}))
        os.replace(tmp, self.tags_dir / f"{name}.json")

    def untag(self, name: str) -> None:
        try:
            (self.tags_dir / f"{name}.json").unlink()
        except FileNotFoundError as exc:
            raise VersionNotFound(f"no tag {name!r} in {self.root}") from exc

    # ------------------------------------------------------------ publishing and cleanup

    def publish(self, version: int, manifest: dict) -> None:
        """Makes ``manifest`` version ``version``, or raises CommitConflict if taken."""
        tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
        with open(tmp, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.manifest_path(version))
        except FileExistsError as exc:
            raise CommitConflict(
                f"version {version} of {self.root} was published by another writer; retry"
            ) from exc
        finally:
            tmp.unlink()
        fsync_dir(self.versions_dir)

    def retire_before(self, before: int) -> list[int]:
        """Forgets versions older than ``before`` (never the latest, never a tagged one)."""
        pinned = set(self.tags().values())
        before = min(before, self.latest)
        removed = [v.version for v in self.infos() if v.version < before and v.version not in pinned]
        for v in removed:
            self.manifest_path(v).unlink()
        return removed

    def referenced_segments(self) -> set[str]:
        """Names of the segments any kept version uses."""
        return {s["name"] for v in self.infos() for s in self.manifest(v.version)["segments"]}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def older_than(path: Path, grace_s: float) -> bool:
    """Whether ``path`` was last changed more than ``grace_s`` ago (False if it is gone)."""
    try:
        return path.stat().st_mtime < time.time() - grace_s
    except FileNotFoundError:
        return False
