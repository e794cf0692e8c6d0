"""pandas HDF5 tables (``DataFrame.to_hdf``, as DeepLabCut writes them) read with h5py, never unpickling.

``pandas.read_hdf`` unpickles object columns and several table attributes, so a crafted labels file can run
code when it is opened. This reader takes only what a DeepLabCut table needs: numeric value blocks and
string/integer axis labels stored as plain HDF5 arrays. A column, axis or attribute that pandas stored as
pickled Python objects is refused with :class:`PickledTableError`; the few attributes pandas always writes as
pickles (the "table" format's column labels and level names) are decoded by :func:`literal_pickle`, which
accepts only data opcodes (lists, tuples, dicts, strings, numbers) and never imports or calls anything.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import numpy as np


class PickledTableError(ValueError):
    """The table holds Python objects that only unpickling could read (refused: it could run code)."""


class NotAPandasTable(ValueError):
    """The HDF5 file holds no pandas DataFrame under the expected key."""


_PUSH = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_LIST": "list", "EMPTY_DICT": "dict",
         "EMPTY_TUPLE": "tuple"}
_VALUE_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING",
              "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
              "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}


def literal_pickle(data: bytes):
    """The plain data (None, bool, numbers, str, bytes, lists, tuples, dicts) of a pickle, without unpickling.

    Walks the opcodes with :func:`pickletools.genops` and builds only literals; any opcode that would look up
    a class or function (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT, PERSID …) raises
    :class:`PickledTableError`, so nothing is imported, called or executed.
    """
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise PickledTableError("malformed pickle (no mark)")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                break
            if name in _PUSH:
                value = _PUSH[name]
                stack.append([] if value == "list" else {} if value == "dict" else () if value == "tuple" else value)
            elif name in _VALUE_OPS:
                stack.append(arg)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = pop_mark()
                stack[-1].update(zip(items[::2], items[1::2], strict=True))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                raise PickledTableError(f"the pickle refers to Python code ({name}); it is not plain data")
    except PickledTableError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as e:
        raise PickledTableError(f"malformed pickle ({e})") from None
    if len(stack) != 1:
        raise PickledTableError("malformed pickle")
    return stack[0]


def _text(value) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _attr(node, name: str, default=None):
    """An HDF5 attribute as plain data; PyTables' pickled attributes (b'(lp0…', b'N.') are decoded as literals."""
    if name not in node.attrs:
        return default
    value = node.attrs[name]
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        raise PickledTableError(f"attribute {name!r} holds Python objects")
    if isinstance(value, bytes | np.bytes_):
        raw = bytes(value)
        # PyTables stores a non-NumPy attribute as its pickle (protocol 0 starts with '(' , 'N', 'I', 'V', 'S', …;
        # protocol 2+ with b'\x80'); everything else is a plain string
        if raw == b"N." or raw.startswith(b"\x80") or (raw[:1] in (b"(", b"I", b"V", b"F") and raw.endswith(b".")):
            try:
                return literal_pickle(raw)
            except PickledTableError:
                pass  # not plain data: kept as the text it is (nothing was run)
        return raw.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain_array(node, what: str) -> np.ndarray:
    """A dataset as a NumPy array of numbers or byte strings; pickled objects (variable-length) are refused."""
    import h5py

    if not isinstance(node, h5py.Dataset):
        raise NotAPandasTable(f"{what} is not an HDF5 array")
    dtype = node.dtype
    if h5py.check_vlen_dtype(dtype) is not None or dtype.kind not in "biufS":
        raise PickledTableError(
            f"{what} holds Python objects (stored pickled by pandas), which ppmtrack does not unpickle"
        )
    return node[()]


def _labels(values: np.ndarray) -> list:
    return [_text(v) if values.dtype.kind == "S" else v.item() for v in values]


def _axis(group, key: str) -> tuple[list[str | None], list[tuple]]:
    """A fixed-format axis (``axis0``/``axis1``/``block0_items``): its level names and one tuple per entry."""
    variety = _attr(group, f"{key}_variety", "regular")
    if variety == "multi":
        n_levels = int(_attr(group, f"{key}_nlevels"))
        names, columns = [], []
        for i in range(n_levels):
            level_node = group[f"{key}_level{i}"]
            levels = _labels(_plain_array(level_node, f"{key} level {i}"))
            codes = _plain_array(group[f"{key}_label{i}"], f"{key} codes {i}")
            if codes.dtype.kind not in "iu":
                raise NotAPandasTable(f"{key} codes {i} are not integers")
            name = _attr(level_node, "name")
            names.append(None if name is None else str(name))
            columns.append([levels[c] if 0 <= c < len(levels) else None for c in codes.tolist()])
        return names, list(zip(*columns, strict=True)) if columns else []
    if variety != "regular":
        raise NotAPandasTable(f"unknown axis layout {variety!r}")
    node = group[key]
    name = _attr(node, "name")
    return [None if name is None else str(name)], [(v,) for v in _labels(_plain_array(node, key))]


def read_pandas_hdf5(path: str | Path, key: str | None = None) -> tuple[list[str | None], list[tuple], list[tuple],
                                                                         np.ndarray]:
    """The DataFrame in an HDF5 file as (column level names, column tuples, row index tuples, float values).

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file written by ``DataFrame.to_hdf`` (format ``fixed`` or ``table``).
    key : str, optional
        The group holding the DataFrame; left out, the only top-level group (DeepLabCut: ``df_with_missing``).

    Raises
    ------
    PickledTableError
        A column, row label or needed attribute is stored as pickled Python objects.
    NotAPandasTable
        The file holds no (or more than one) DataFrame, or one laid out in a way this reader does not know.
    OSError
        The file cannot be opened as HDF5.
    """
    import h5py

    with h5py.File(path, "r") as f:
        if key is None:
            groups = [k for k in f if isinstance(f[k], h5py.Group)]
            if len(groups) != 1:
                raise NotAPandasTable(f"expected one DataFrame, found groups: {', '.join(groups) or 'none'}")
            key = groups[0]
        if key not in f or not isinstance(f[key], h5py.Group):
            raise NotAPandasTable(f"no DataFrame under key {key!r}")
        group = f[key]
        kind = _attr(group, "pandas_type")
        if kind == "frame":
            return _read_fixed(group)
        if kind == "frame_table":
            return _read_table(group)
        raise NotAPandasTable(f"holds a pandas {kind or 'unknown'!s} object, not a DataFrame")


def _read_fixed(group) -> tuple[list[str | None], list[tuple], list[tuple], np.ndarray]:
    level_names, columns = _axis(group, "axis0")
    _, index = _axis(group, "axis1")
    position = {c: j for j, c in enumerate(columns)}
    values = np.full((len(index), len(columns)), np.nan)
    for b in range(int(_attr(group, "nblocks", 0))):
        _, items = _axis(group, f"block{b}_items")
        block = _plain_array(group[f"block{b}_values"], f"value block {b}")
        if block.dtype.kind not in "biuf":
            raise PickledTableError(f"value block {b} holds text, not numbers")
        block = np.asarray(block, dtype=np.float64).reshape(len(index), len(items))
        for j, item in enumerate(items):
            if item not in position:
                raise NotAPandasTable(f"value block {b} names a column {item!r} the table does not list")
            values[:, position[item]] = block[:, j]
    return level_names, columns, index, values


def _read_table(group) -> tuple[list[str | None], list[tuple], list[tuple], np.ndarray]:
    table = group["table"]
    if table.dtype.names is None:
        raise NotAPandasTable("the 'table' node is not a table")
    data = table[()]
    index_field = "index"
    if index_field not in table.dtype.names:
        raise NotAPandasTable("the table has no 'index' column")
    index_values = data[index_field]
    if index_values.dtype.kind not in "biufS":
        raise PickledTableError("the row index holds Python objects")
    index = [(v,) for v in _labels(index_values)]
    info = _attr(group, "info", {}) or {}
    names = info.get(1, {}).get("names") if isinstance(info.get(1), dict) else None
    columns, blocks = [], []
    for field in table.dtype.names:
        if field == index_field:
            continue
        if not field.startswith("values_block_"):
            raise NotAPandasTable(f"data column {field!r} is not supported (expected value blocks only)")
        block = data[field]
        if block.dtype.kind not in "biuf":
            raise PickledTableError(f"{field} holds text or Python objects, not numbers")
        labels = _attr(table, f"{field}_kind")
        if not isinstance(labels, list):
            raise NotAPandasTable(f"{field} has no column labels")
        block = np.asarray(block, dtype=np.float64).reshape(len(index), -1)
        if block.shape[1] != len(labels):
            raise NotAPandasTable(f"{field} has {block.shape[1]} columns but {len(labels)} labels")
        columns += [c if isinstance(c, tuple) else (c,) for c in labels]
        blocks.append(block)
    values = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(index), 0))
    n_levels = len(columns[0]) if columns else 0
    if not isinstance(names, list) or len(names) != n_levels:
        names = [None] * n_levels
    return [None if n is None else str(n) for n in names], columns, index, values
