"""The study's CSV: one row per measured point, appended safely by concurrent jobs.

Columns are fixed (:data:`COLUMNS`); a file whose header differs, or a row that does not parse,
is refused with one line (:class:`CsvError`, exit status 2 from the command line).
"""

import csv
import fcntl
import io
import os

from hpcnn.errors import HpcnnError

# collective kinds a strategy reports (hpcnn.parallel: CommStats); anything else goes to "other"
KINDS = ("allreduce", "allreduce_poll", "allreduce_head", "allreduce_loss", "allgather",
         "reduce_scatter", "bcast", "reduce", "other")
STATS = ("min", "mean", "max")
TIMES = ("step_s", "compute_s", "data_s", "wait_s") + tuple(f"wait_{k}_s" for k in KINDS)

META = ("time_utc", "cpu", "nodes", "ranks", "ranks_per_node", "threads", "net", "parallel",
        "scheme", "grid", "batch_per_rank", "global_batch", "link", "steps", "warmup",
        "images_per_s")
COLUMNS = (META + tuple(f"{t}_{s}" for t in TIMES for s in STATS)
           + tuple(f"bytes_{k}" for k in KINDS) + ("bytes_total", "seed", "command"))

INTS = {"nodes", "ranks", "ranks_per_node", "threads", "batch_per_rank", "global_batch",
        "steps", "warmup", "seed"}
TEXT = {"time_utc", "cpu", "net", "parallel", "scheme", "grid", "link", "command"}


class CsvError(HpcnnError):
    """A malformed study CSV (the message names the file and the line)."""


def _format(v):
    if isinstance(v, float):
        return repr(v)
    return "" if v is None else str(v)


def format_row(row):
    """One CSV line (with its newline) for ``row`` (a dict holding every column)."""
    missing = [c for c in COLUMNS if c not in row]
    extra = [c for c in row if c not in COLUMNS]
    if missing or extra:
        raise ValueError(f"row columns differ: missing {missing}, unknown {extra}")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([_format(row[c]) for c in COLUMNS])
    return out.getvalue()


def header_line():
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(COLUMNS)
    return out.getvalue()


def check_csv(path):
    """Raise CsvError unless ``path`` is absent, empty or starts with the study's header."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise CsvError(f"cannot read {path}: {e}") from None
    if first != header_line():
        raise CsvError(f"{path}: its header is not the scaling study's ({len(COLUMNS)} "
                       f"columns starting {COLUMNS[0]!r}); write to a new file")


def append_row(path, row):
    """Append ``row`` to ``path`` (created with its header): the file is locked (``flock``) for
    the check and the one ``write``, so jobs appending at once neither interleave nor write two
    headers; a file holding another header is refused (CsvError)."""
    line = format_row(row)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size:
            check_csv(path)
            data = line
        else:
            data = header_line() + line
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def _parse(name, text, where):
    if name in TEXT:
        return text
    if text == "":
        if name.startswith(("wait_", "bytes_")):
            return 0.0
        raise CsvError(f"{where}: column {name!r} is empty")
    try:
        v = int(text) if name in INTS else float(text)
    except ValueError:
        raise CsvError(f"{where}: column {name!r} holds {text!r}, not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise CsvError(f"{where}: column {name!r} holds {text!r}, not a finite number")
    return v


def read_rows(path):
    """The rows of a study CSV as dicts (numbers parsed); CsvError names the first bad line."""
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise CsvError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    with f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise CsvError(f"{path}: empty file (no header)")
            if tuple(header) != COLUMNS:
                bad = next((h for h, c in zip(header, COLUMNS) if h != c), None)
                raise CsvError(f"{path}: line 1 is not the scaling study's header "
                               f"({len(header)} columns, expected {len(COLUMNS)}"
                               + (f"; {bad!r} where {COLUMNS[header.index(bad)]!r} belongs"
                                  if bad else "") + ")")
            for fields in reader:
                where = f"{path}: line {reader.line_num}"
                if not fields:
                    continue
                if len(fields) != len(COLUMNS):
                    raise CsvError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)}")
                rows.append({c: _parse(c, v, where) for c, v in zip(COLUMNS, fields)})
        except csv.Error as e:
            raise CsvError(f"{path}: line {reader.line_num}: {e}") from None
        except UnicodeDecodeError:
            raise CsvError(f"{path}: not UTF-8 text") from None
    return rows


def cell_key(r):
    """What makes a row's cell: everything but the measurement."""
    return (r["net"], r["parallel"], r["scheme"], r["grid"], r["nodes"], r["ranks_per_node"],
            r["batch_per_rank"], r["link"], r["threads"])


def best_rows(rows):
    """Each cell's fastest row (cells measured more than once: the least disturbed run)."""
    best = {}
    for r in rows:
        key = cell_key(r)
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    return list(best.values())


def spreads(rows):
    """[(fastest / slowest images/s - 1, fastest row)] of every cell measured more than once,
    largest first: how far the machine repeats a measurement."""
    cells = {}
    for r in rows:
        cells.setdefault(cell_key(r), []).append(r)
    out = [(max(x["images_per_s"] for x in v) / min(x["images_per_s"] for x in v) - 1,
            max(v, key=lambda x: x["images_per_s"])) for v in cells.values() if len(v) > 1]
    return sorted(out, key=lambda x: -x[0])
