"""The file watch of ``gateway run``: when the files a reload reads changed, and settled.

A reload reads gateway.yaml, its release signature and every Rego file of
``policy.directories``. A GitOps rollout may change any of them - a change to the policies only
is common - so all of them are watched, not only gateway.yaml (which alone would leave a policy
rollout waiting for a SIGHUP while ``gateway status`` showed the old policy running).

A rollout also writes them one after another, and a file in place (``git checkout`` rewrites a
file rather than renaming a new one over it): a poll in the middle would reload a mix of old and
new files, or a half-written file that may even be valid YAML (a list of targets cut short). So
a change is reloaded only once the files have stayed as they are for one more poll.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.config.loader import LoadedConfig
from gateway.gitops.signing import signature_path
from gateway.policy.loader import rego_files

# (path, modification time in ns, size) of each watched file; (path, -1, -1) when missing.
State = tuple[tuple[str, int, int], ...]


class FileWatch:
    """Polled by the watch loop; says when to reload."""

    def __init__(self, config_path: str) -> None:
        """Watch ``config_path`` alone until :meth:`follow` names the rest."""
        self._config = Path(config_path)
        self._files: tuple[Path, ...] = ()
        self._roots: tuple[Path, ...] = ()
        self._seen: State = self.state()
        self._pending: State | None = None

    def follow(self, loaded: LoadedConfig | None, seen: State) -> None:
        """After a start or a reload that read the files as they were in ``seen`` (taken with
        :meth:`state` before reading them): watch what ``loaded`` reads (None: a reload that
        failed, the same files as before), and count what ``seen`` holds as seen. A file
        changed since ``seen`` is still a change, so it is not lost to the reload's own time."""
        if loaded is not None:
            self._files = (signature_path(loaded),)
            self._roots = tuple(
                Path(loaded.resolve_path(d)) for d in loaded.config.policy.directories
            )
        self._seen, self._pending = seen, None

    def poll(self) -> bool:
        """Whether the watched files changed since the last reload and have not changed since
        the previous poll (then the change counts as seen, whether the reload takes it or not)."""
        now = self.state()
        if now == self._seen:
            self._pending = None
            return False
        if now != self._pending:
            self._pending = now  # still being written, perhaps: look again next time
            return False
        self._seen, self._pending = now, None
        return True

    def state(self) -> State:
        """The watched files as they are now."""
        paths = [self._config, *self._files]
        for root in self._roots:
            try:
                paths.extend(path for _, path in rego_files(root))
            except OSError:
                paths.append(root)  # unreadable: its stat below records that much

        entries: list[tuple[str, int, int]] = []
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError:
                entries.append((str(path), -1, -1))
                continue
            entries.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(entries)
