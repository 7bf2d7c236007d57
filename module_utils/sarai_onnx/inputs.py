"""Model inputs for validation: loaded from an .npz, or generated from the input signature."""

import numpy as np

from .errors import SaraiError

_FLOAT = ("float16", "float32", "float64", "bfloat16")


MAX_ARRAY_BYTES = 4 << 30  # one input array; a larger header is refused before anything is read


def read_npz_arrays(path, names, max_bytes=MAX_ARRAY_BYTES):
    """{name: array} for `names` only, from an .npz: each member's header (shape, dtype) is read
    and checked against max_bytes before its data; members not asked for are never read."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise SaraiError(f"inputs file {path} does not exist: give an .npz with one array per model input") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise SaraiError(f"inputs file {path} is not a readable .npz ({exc}); save it with numpy.savez") from None
    with archive:
        members = {m[:-len(".npy")]: m for m in archive.namelist() if m.endswith(".npy")}
        missing = [n for n in names if n not in members]
        if missing:
            raise SaraiError(f"inputs file {path} has no array for model input(s) {', '.join(missing)} "
                             f"(it has: {', '.join(sorted(members)) or 'nothing'})")
        out = {}
        for name in names:
            try:
                with archive.open(members[name]) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:
                        raise ValueError(f".npy format version {version} is not supported")
                    shape, _, dtype = read_header(fh)
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if dtype.hasobject or nbytes > max_bytes:
                        raise SaraiError(f"inputs file {path}: array {name!r} ({list(shape)} x {dtype}) holds "
                                         f"{'Python objects' if dtype.hasobject else f'{nbytes} bytes'}, more "
                                         f"than the {max_bytes} bytes an input may take; give smaller inputs")
                with archive.open(members[name]) as fh:
                    out[name] = np.lib.format.read_array(fh, allow_pickle=False)
            except SaraiError:
                raise
            except Exception as exc:
                raise SaraiError(f"inputs file {path}: array {name!r} is not readable ({exc}); "
                                 "save it with numpy.savez") from None
        return out


def _check_array(spec, arr, where):
    if arr.dtype.name != spec["dtype"]:
        raise SaraiError(f"{where}: array {spec['name']!r} is {arr.dtype.name}, "
                         f"the model expects {spec['dtype']}; save it with that dtype")
    check_not_empty(spec["name"], list(arr.shape), where)


def check_not_empty(name, shape, where):
    if any(d == 0 for d in shape):
        raise SaraiError(f"{where}: input {name!r} has shape {shape}, which holds no values; "
                         "give at least one value per dimension")


def load_npz(path, signature):
    """{name: array} from an .npz holding one array per model input (other arrays are not read)."""
    arrays = read_npz_arrays(path, [s["name"] for s in signature])
    for spec in signature:
        _check_array(spec, arrays[spec["name"]], f"inputs file {path}")
        _check_shape(spec, list(arrays[spec["name"]].shape), f"inputs file {path}")
    return arrays


def load_sequence_npz(path, signature, state_map):
    """(windows, initial state) for a stream: every input not in state_map is streamed and its array
    has a leading window axis (N windows, N the same for all); a state input's array is its value
    for the first window (no window axis), or zeros when the npz has none and its shape is fixed."""
    where = f"inputs file {path}"
    streamed = [s for s in signature if s["name"] not in state_map]
    states = [s for s in signature if s["name"] in state_map]
    arrays = read_npz_arrays(path, [s["name"] for s in streamed])
    import zipfile

    with zipfile.ZipFile(path) as archive:
        present = {m[:-len(".npy")] for m in archive.namelist()}
    arrays.update(read_npz_arrays(path, [s["name"] for s in states if s["name"] in present]))
    windows, counts = {}, set()
    for spec in streamed:
        arr = arrays[spec["name"]]
        _check_array(spec, arr, where)
        rank = len(spec["shape"]) if spec["shape"] is not None else None
        if rank is not None and arr.ndim != rank + 1:
            raise SaraiError(f"{where}: sequence input {spec['name']!r} has shape {list(arr.shape)}, which has no "
                             f"leading window axis: give [windows, *{spec['shape']}] (the model takes {rank} dims "
                             "per window)")
        _check_shape(spec, list(arr.shape[1:]), where)
        windows[spec["name"]] = arr
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise SaraiError(f"{where}: the sequence inputs have different window counts "
                         f"({', '.join(f'{n}: {a.shape[0]}' for n, a in windows.items())}); give the same number")
    initial = {}
    for spec in states:
        if spec["name"] in arrays:
            arr = arrays[spec["name"]]
            _check_array(spec, arr, where)
            _check_shape(spec, list(arr.shape), where)
        elif spec["shape"] is not None and all(isinstance(d, int) for d in spec["shape"]):
            arr = np.zeros(spec["shape"], dtype=spec["dtype"])
        else:
            raise SaraiError(f"{where}: state input {spec['name']!r} has symbolic dims {spec['shape']}: "
                             "give its first value in the .npz (without a window axis)")
        initial[spec["name"]] = arr
    if not windows:
        raise SaraiError(f"state_map covers every model input: nothing is streamed from {path}")
    return windows, initial


def generate_inputs(signature, input_shapes=None, input_values=None, seed=0):
    """{name: array} for a signature [{name, dtype, shape}] (shape dims: int, symbol string, None).

    Float inputs are seeded standard-normal noise. Integer, bool and scalar inputs carry meaning
    (token ids, a sample rate that must be 16000 ...), so they need a value in input_values;
    input_values also fixes any float input to a constant. Symbolic dims need input_shapes.
    """
    input_shapes, input_values = dict(input_shapes or {}), dict(input_values or {})
    names = {s["name"] for s in signature}
    for option, given in (("input_shapes", input_shapes), ("input_values", input_values)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise SaraiError(f"{option} names {', '.join(unknown)}, which the model does not have "
                             f"(inputs: {', '.join(sorted(names))})")
    rng = np.random.default_rng(seed)
    out = {}
    for spec in signature:
        name, dtype = spec["name"], spec["dtype"]
        shape = _resolve_shape(spec, input_shapes.get(name))
        if name in input_values:
            try:
                out[name] = np.full(shape, input_values[name], dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise SaraiError(f"input_values[{name!r}]={input_values[name]!r} does not fit {dtype}: {exc}")
        elif dtype in _FLOAT and shape:
            out[name] = rng.standard_normal(shape).astype(dtype)
        else:
            kind = "a scalar" if not shape else f"a {dtype} tensor"
            raise SaraiError(f"model input {name!r} is {kind} ({dtype}, shape {spec['shape']}): random values "
                             f"would be meaningless, give its value in input_values (e.g. {name}: 16000 "
                             "for a sample rate)")
    return out


def _resolve_shape(spec, given):
    shape = spec["shape"]
    if shape is None:
        if given is None:
            raise SaraiError(f"model input {spec['name']!r} has no declared shape: give input_shapes: "
                             f"{{{spec['name']}: [...]}}")
        shape = [None] * len(given)
    if given is None:
        symbolic = [d for d in shape if not isinstance(d, int)]
        if symbolic:
            example = [d if isinstance(d, int) else 1 for d in shape]
            raise SaraiError(f"model input {spec['name']!r} has symbolic dims {symbolic}: give input_shapes: "
                             f"{{{spec['name']}: {example}}} with the sizes to test")
        return [int(d) for d in shape]
    # Values templated by Jinja may arrive as strings.
    given = [int(d) if isinstance(d, str) and d.isdigit() else d for d in given]
    _check_shape(spec, given, "input_shapes")
    check_not_empty(spec["name"], given, "input_shapes")
    return [int(d) for d in given]


def _check_shape(spec, shape, where):
    declared = spec["shape"]
    if declared is None:
        return
    if len(shape) != len(declared) or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise SaraiError(f"{where}: shape {shape} for input {spec['name']!r} does not match its rank "
                         f"({len(declared)} dims: {declared}); give non-negative integers")
    for got, want in zip(shape, declared):
        if isinstance(want, int) and want > 0 and got != want:
            raise SaraiError(f"{where}: shape {shape} for input {spec['name']!r} conflicts with the model's "
                             f"fixed dims {declared}")
