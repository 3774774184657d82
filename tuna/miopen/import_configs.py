"""``go_fish.py miopen import_configs``: problems from driver lines or keys into config rows
(reference/miopen.md §2.5, with the bugs of §11.17 and §11.18 fixed).

A file's lines are read, blank and ``#`` lines skipped and exact duplicates counted once;
each remaining line is parsed (:func:`tuna.miopen.driver.parse_line`) or refused with a
one-line warning ``FILE:LINE: reason``, and refusals are counted by reason. The rows of all
accepted lines are then written in one transaction with a few statements, whatever the
number of lines: tensors and configs already present are found by their key (a config by
its md5, which is indexed), the rest inserted many rows per statement (INSERT IGNORE, so
that two imports at once do not fail on each other's rows).

Where MITuna differs: framework and model are any names (not enumerations, whose member
names it stored in place of the values given), a missing framework/model or a missing
required option is a one-line error with a non-zero exit (MITuna logs it, uses id -1 and
exits 0); ``-T`` refuses lines whose config is unknown instead of failing on the insert;
``--add_benchmark`` imports the configs it benchmarks too, with ``-b``/``-c`` applied.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuna.errors import BadInput
from tuna.miopen import tables
from tuna.miopen.driver import BnProblem, ConvProblem, DriverError, Problem, config_md5, driver_string, parse_line
from tuna.miopen.problem import BN_COMMANDS, CONV_COMMANDS

log = logging.getLogger(__name__)

CONFIG_TYPES = ("convolution", "batch_norm")
#: Rows per SELECT ... IN (...): well under every database's parameter limit.
CHUNK = 400
TENSOR_KEY = ("dim0", "dim1", "dim2", "dim3", "dim4", "layout", "num_dims", "data_type")
BN_KEY = tables.BN_KEY
BENCHMARK_KEY = ("framework", "model", "batchsize", "gpu_number", "config")
DRIVER_LIMIT = 512  # conv_config.driver, bn_config.driver, *_benchmark.driver_cmd


@dataclass(frozen=True)
class Refusal:
    where: str  # FILE:LINE
    kind: str
    message: str


@dataclass
class Report:
    """What an import did; printed by :func:`print_report`."""

    lines: int = 0
    duplicate_lines: int = 0
    refused: list[Refusal] = field(default_factory=list)
    new_configs: int = 0
    known_configs: int = 0
    tagged: int = 0
    already_tagged: int = 0
    marked_recurrent: int = 0
    benchmarks_added: int = 0
    benchmarks_known: int = 0
    warn: bool = True  # a warning line per refused line

    def refuse(self, where: str, kind: str, message: str) -> None:
        self.refused.append(Refusal(where, kind, message))
        if self.warn:
            log.warning("%s: %s", where, message)


@dataclass(frozen=True)
class Names:
    """The text values an import writes, checked before anything is read."""

    tag: str | None
    recurrent: bool
    framework_id: int | None = None
    model_id: int | None = None
    gpu_count: int = 1


# -- reading and parsing ---------------------------------------------------------------------


def source_lines(file_name: str | None, driver: str | None) -> list[tuple[str, str]]:
    """(``FILE:LINE``, text) of every non-blank, non-comment line."""
    if driver is not None:
        return [("-d", driver.strip())] if driver.strip() else []
    assert file_name is not None
    try:
        text = Path(file_name).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise BadInput(f"cannot read {file_name}: {exc.strerror}") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            found.append((f"{file_name}:{number}", stripped))
    return found


def parse_batches(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise BadInput(f"-b/--batches {text!r} is not a list of positive batch sizes, e.g. 32,64")
    return list(dict.fromkeys(batches))


def command_type(command: str | None, config_type: str) -> str | None:
    """The data type a ``-c`` precision override sets, checked against ``-C``."""
    if command is None:
        return None
    commands = CONV_COMMANDS if config_type == "convolution" else BN_COMMANDS
    if command not in commands:
        raise BadInput(f"-c {command} is not a {config_type} command ({', '.join(commands)})")
    return commands[command]


def problems_of(
    text: str, config_type: str, data_type: str | None, batches: list[int] | None
) -> list[ConvProblem] | list[BnProblem]:
    """The problems of one line after ``-c`` and ``-b``; raises :class:`DriverError`."""
    problems: list[Problem] = parse_line(text)
    wanted = ConvProblem if config_type == "convolution" else BnProblem
    if not all(isinstance(p, wanted) for p in problems):
        other = "batch_norm" if config_type == "convolution" else "convolution"
        kind = "batch-norm" if other == "batch_norm" else "convolution"
        raise DriverError("wrong_config_type", f"a {kind} line: import it with -C {other}")
    out: list[Any] = []
    for problem in problems:
        if isinstance(problem, ConvProblem):
            problem.check_storable()
            if data_type:
                problem = dataclasses.replace(problem, in_type=data_type, wei_type=data_type, out_type=data_type)
        elif data_type:
            problem = dataclasses.replace(problem, data_type=data_type)
        for batch in batches or [problem.batchsize]:
            out.append(dataclasses.replace(problem, batchsize=batch))
    return out


@dataclass(frozen=True)
class Rows:
    """The rows of one problem: its input (and weight) tensor, its config and driver."""

    input_tensor: tuple[Any, ...]
    weight_tensor: tuple[Any, ...] | None
    config: dict[str, Any]
    driver: str
    batchsize: int


def rows_of(problem: ConvProblem | BnProblem) -> Rows:
    driver = driver_string(problem)
    if len(driver) > DRIVER_LIMIT:
        raise DriverError("too_long", f"its driver string has {len(driver)} characters; the tables hold {DRIVER_LIMIT}")
    if isinstance(problem, ConvProblem):
        in_t, w_t, config = problem.input_tensor(), problem.weight_tensor(), problem.config_row()
        config = {**config, "md5": config_md5(config, in_t, w_t), "driver": driver}
        return Rows(_key(in_t, TENSOR_KEY), _key(w_t, TENSOR_KEY), config, driver, problem.batchsize)
    config = {**problem.config_row(), "driver": driver}
    return Rows(_key(problem.input_tensor(), TENSOR_KEY), None, config, driver, problem.batchsize)


def _key(row: Mapping[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(row[n] for n in names)


# -- writing ---------------------------------------------------------------------------------


def insert_ignore(table: sa.Table) -> sa.Insert:
    """An INSERT that skips rows whose unique key exists (another import's, at the same time)."""
    return sa.insert(table).prefix_with("IGNORE", dialect="mysql").prefix_with("OR IGNORE", dialect="sqlite")


def lookup(conn: Connection, table: sa.Table, names: Sequence[str], keys: Iterable[tuple[Any, ...]]) -> dict:
    """id by key, for the keys present in ``table`` (valid or not: the unique key says so)."""
    keys = list(dict.fromkeys(keys))
    columns = [table.c[n] for n in names]
    found: dict[tuple[Any, ...], int] = {}
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        where = columns[0].in_([k[0] for k in chunk]) if len(columns) == 1 else sa.tuple_(*columns).in_(chunk)
        for row in conn.execute(sa.select(table.c.id, *columns).where(where)):
            found[tuple(row[1:])] = int(row[0])
    return found


def get_or_insert(
    conn: Connection, table: sa.Table, names: Sequence[str], rows: Mapping[tuple[Any, ...], dict[str, Any]]
) -> tuple[dict[tuple[Any, ...], int], int]:
    """ids of every row (by key), and how many were inserted now."""
    ids = lookup(conn, table, names, rows)
    missing = [row for key, row in rows.items() if key not in ids]
    if missing:
        conn.execute(insert_ignore(table), missing)
        ids.update(lookup(conn, table, names, [k for k in rows if k not in ids]))
    lost = [k for k in rows if k not in ids]
    if lost:  # MariaDB's unique keys ignore case: 'Foo' is taken where 'foo' exists
        raise BadInput(
            f"{table.name}: {len(lost)} row(s) clash with stored rows that differ only in letter case, "
            f"e.g. {lost[0]!r}; MariaDB compares these values without case"
        )
    return ids, len(missing)


def resolve_names(conn: Connection, args: argparse.Namespace, *, benchmark: bool) -> Names:
    framework_id = model_id = None
    if args.framework is not None or benchmark:
        framework_id = find_named(conn, tables.framework, "framework", args.framework, args.fw_version)
    if args.model is not None or benchmark:
        model_id = find_named(conn, tables.model, "model", args.model, args.md_version)
    return Names(
        tag=args.tag,
        recurrent=args.mark_recurrent,
        framework_id=framework_id,
        model_id=model_id,
        gpu_count=args.gpu_count if args.gpu_count is not None else 1,
    )


def find_named(conn: Connection, table: sa.Table, column: str, name: str, version: float) -> int:
    found = conn.execute(
        sa.select(table.c.id).where(table.c[column] == name, table.c.version == float(version))
    ).scalar()
    if found is None:
        flag = "--add_framework" if column == "framework" else "--add_model"
        vflag = "--fw_version" if column == "framework" else "--md_version"
        raise BadInput(
            f"no {column} {name!r} version {version:g}; add it with: "
            f"./go_fish.py miopen import_configs {flag} {shlex.quote(name)} {vflag} {version:g}"
        )
    return int(found)


def import_lines(
    conn: Connection,
    lines: list[tuple[str, str]],
    *,
    config_type: str,
    names: Names,
    data_type: str | None,
    batches: list[int] | None,
    tag_only: bool,
    benchmark: bool,
    warn: bool = True,
) -> Report:
    report = Report(lines=len(lines), warn=warn)
    seen: set[str] = set()
    accepted: list[tuple[str, list[Rows]]] = []
    for where, text in lines:
        if text in seen:
            report.duplicate_lines += 1
            continue
        seen.add(text)
        try:
            rows = [rows_of(p) for p in problems_of(text, config_type, data_type, batches)]
        except DriverError as exc:
            report.refuse(where, exc.kind, str(exc))
            continue
        accepted.append((where, rows))
    conv = config_type == "convolution"
    config_table = tables.conv_config if conv else tables.bn_config
    prefix = "conv" if conv else "bn"

    tensor_rows = {}
    for _, rows in accepted:
        for r in rows:
            for t in (r.input_tensor, r.weight_tensor):
                if t is not None:
                    tensor_rows[t] = dict(zip(TENSOR_KEY, t))
    tensor_ids, _ = get_or_insert(conn, tables.tensor, TENSOR_KEY, tensor_rows)

    key_names = ("md5",) if conv else BN_KEY
    config_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    line_keys: list[tuple[str, list[tuple[tuple[Any, ...], Rows]]]] = []
    for where, rows in accepted:
        keyed = []
        for r in rows:
            row = dict(r.config, input_tensor=tensor_ids[r.input_tensor])
            if r.weight_tensor is not None:
                row["weight_tensor"] = tensor_ids[r.weight_tensor]
            key = _key(row, key_names)
            config_rows.setdefault(key, row)
            keyed.append((key, r))
        line_keys.append((where, keyed))

    known = lookup(conn, config_table, key_names, config_rows)
    if tag_only:
        config_ids = known
        for where, keyed in line_keys:
            if any(key not in known for key, _ in keyed):
                report.refuse(
                    where, "unknown_config", f"its config is not in {config_table.name}; import it without -T"
                )
        line_keys = [(w, k) for w, k in line_keys if all(key in known for key, _ in k)]
    else:
        config_ids, report.new_configs = get_or_insert(conn, config_table, key_names, config_rows)
    used = {key for _, keyed in line_keys for key, _ in keyed}
    report.known_configs = len(used & set(known))
    ids = sorted({config_ids[key] for key in used})

    if names.tag is not None or names.recurrent:
        tag_configs(conn, tables.conv_config_tags if conv else tables.bn_config_tags, ids, names, report)
    if benchmark:
        benchmark_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for _, keyed in line_keys:
            for key, r in keyed:
                row = {
                    "framework": names.framework_id,
                    "model": names.model_id,
                    "batchsize": r.batchsize,
                    "gpu_number": names.gpu_count,
                    "config": config_ids[key],
                    "driver_cmd": r.driver,
                }
                benchmark_rows.setdefault(_key(row, BENCHMARK_KEY), row)
        table = tables.conv_benchmark if prefix == "conv" else tables.bn_benchmark
        _, report.benchmarks_added = get_or_insert(conn, table, BENCHMARK_KEY, benchmark_rows)
        report.benchmarks_known = len(benchmark_rows) - report.benchmarks_added
    return report


def tag_configs(conn: Connection, table: sa.Table, ids: list[int], names: Names, report: Report) -> None:
    tag = names.tag if names.tag is not None else "no_tag"  # MITuna's server default
    rows = {(config_id, tag): {"config": config_id, "tag": tag} for config_id in ids}
    if names.recurrent:
        for row in rows.values():
            row["recurrent"] = True
    existing = lookup(conn, table, ("config", "tag"), rows)
    _, report.tagged = get_or_insert(conn, table, ("config", "tag"), rows)
    report.already_tagged = len(existing)
    if names.recurrent and existing:
        ids_existing = list(existing.values())
        for start in range(0, len(ids_existing), CHUNK):
            done = conn.execute(
                sa.update(table)
                .where(table.c.id.in_(ids_existing[start : start + CHUNK]), table.c.recurrent == sa.false())
                .values(recurrent=True)
            )
            report.marked_recurrent += done.rowcount


def print_report(report: Report, *, tag_only: bool, tagging: bool, benchmark: bool) -> None:
    if not tag_only:
        print(f"New configs added: {report.new_configs}")
    print(f"Known configs: {report.known_configs}")
    if tagging:
        print(f"Tagged configs: {report.tagged}")
        print(f"Already tagged: {report.already_tagged}")
        if report.marked_recurrent:
            print(f"Marked recurrent: {report.marked_recurrent}")
    if benchmark:
        print(f"Benchmarks added: {report.benchmarks_added}")
        print(f"Benchmarks known: {report.benchmarks_known}")
    print(f"Duplicate lines: {report.duplicate_lines}")
    print(f"Refused lines: {len(report.refused)}")
    for kind, count in sorted(Counter(r.kind for r in report.refused).items()):
        print(f"Refused ({kind}): {count}")
