"""kombu's filesystem transport, with every file it shares written atomically.

kombu's own transport (``kombu.transport.filesystem``) creates a message file and only
then locks and writes it, while a consumer never takes that lock: a consumer that lists
the queue folder in between moves the still empty file away, fails to decode it, and its
Celery worker dies (``Unrecoverable error: JSONDecodeError``), leaving the head node
waiting. Its exchange tables (which queue an exchange routes to) have the same gap, and
two processes creating the same table can overwrite each other's binding.

Here a writer writes the whole file under a name no reader looks at (a leading dot, in the
same folder, so on the same file system) and renames it into place; a rename is atomic, so
a reader sees a whole file or none. A consumer claims a message by renaming it into the
processed folder, which must be on the same file system as the queue folder (tuna keeps
both under ``TUNA_HOME/broker``): exactly one of several consumers wins a message.

Message and table files keep kombu's names and formats, so queue lengths and purges work
as before. Importing this module registers the transport as ``tunafs``;
:func:`tuna.celery_app.app.make_app` selects it for every ``filesystem://`` broker URL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

log = logging.getLogger(__name__)

ALIAS = "tunafs"

#: Ends the name of a file being written; together with the leading dot, no reader matches it.
PART_SUFFIX = ".part"
#: Ends the name of a claimed message that could not be decoded (kept for inspection).
BAD_SUFFIX = ".bad"


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file, or all of the new one."""
    folder, name = os.path.split(os.fspath(path))
    part = os.path.join(folder, f".{name}.{uuid.uuid4().hex}{PART_SUFFIX}")
    try:
        with open(part, "wb") as out:
            out.write(data)
        os.rename(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def message_name(queue: str) -> str:
    """kombu's message file name: oldest first when sorted, ``<queue>.msg`` after the first dot."""
    return f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"


class Channel(filesystem.Channel):
    """A filesystem channel whose files appear whole or not at all."""

    # -- messages ---------------------------------------------------------------------
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu: 2 signatures
        path = os.path.join(self.data_folder_out, message_name(queue))
        try:
            write_atomically(path, str_to_bytes(dumps(payload)))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        names = sorted(name for name in os.listdir(self.data_folder_in) if name.partition(".")[2] == wanted)
        for name in names:
            claimed = os.path.join(self.claim_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
            except ValueError:
                # Not written by this transport (every file here is renamed in whole). Dropping
                # it keeps the worker alive; the head node resends a task that never reports.
                os.rename(claimed, claimed + BAD_SUFFIX)
                log.error("queue %s: dropped a message that is not JSON, kept as %s%s", queue, claimed, BAD_SUFFIX)
                continue
            if not self.store_processed:
                os.unlink(claimed)
            return message
        raise Empty()

    @cached_property
    def claim_folder(self) -> str:
        folder = str(self.processed_folder)
        os.makedirs(folder, exist_ok=True)
        return folder

    # -- exchange tables --------------------------------------------------------------
    def get_table(self, exchange: str) -> list[Any]:
        file = self._exchange_file(exchange)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*entry) for entry in loads(bytes_to_str(data))]

    @contextlib.contextmanager
    def _table_lock(self, file: Path) -> Iterator[None]:
        """Serialises read-modify-write of one table; readers need no lock."""
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(file.with_name(f".{file.name}.lock"), "ab") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _update_table(self, exchange: str, entry: Any, *, add: bool) -> None:
        file = self._exchange_file(exchange)
        try:
            with self._table_lock(file):
                table = self.get_table(exchange)
                if add and entry not in table:
                    table.insert(0, entry)
                elif not add and entry in table:
                    table.remove(entry)
                else:
                    return
                write_atomically(file, str_to_bytes(dumps(table)))
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, entry, add=True)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        # The virtual channel's part (purge the queue), without kombu's unsafe table rewrite.
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, entry, add=False)


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`; same options, same folders."""

    Channel = Channel


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
