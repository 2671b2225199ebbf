"""Read PyTorch checkpoints without installing torch, and without trusting the pickle.

Both of PyTorch's formats are supported: the *legacy* stream (``torch.save(..., _use_new_zipfile_serialization=False)``:
five consecutive pickles followed by raw storages) and the zip format (``data.pkl`` plus one file per
storage). The unpickler admits only the handful of globals a plain state dict needs; anything else
(``os.system``, ``builtins.eval``, ...) raises :class:`UnsafeCheckpointError`. Written here because no
maintained package reads these files without importing torch, and ``torch.load`` would be a 700 MB
dependency for one file.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint asked to import something a state dict never needs."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` would return, resolved to numpy once storages are read."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)

    def resolve(self, storages: dict) -> np.ndarray:
        data = storages[self.storage_key]
        if not self.size:
            return data[self.offset].copy()
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride])
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only OrderedDict, the tensor rebuild functions and the typed storage classes."""

    def __init__(self, file, storage_kinds: dict):
        super().__init__(file)
        self.storage_kinds = storage_kinds  # key -> (dtype, numel), filled by persistent_load

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(f"checkpoint tries to load {module}.{name}, which a weights file never needs; refusing")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"unexpected storage type {storage_type!r}")
        numel = pid[4] if len(pid) > 4 else None
        self.storage_kinds[key] = (storage_type.dtype, numel)
        return key


def _resolve(obj, storages):
    if isinstance(obj, _TensorRef):
        return obj.resolve(storages)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v, storages)) for k, v in obj.items())
    return obj


def _load_legacy(stream: io.BufferedIOBase, path: Path) -> dict:
    def restricted_load():
        return _RestrictedUnpickler(stream, kinds).load()

    kinds: dict = {}
    magic = restricted_load()
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    restricted_load()  # protocol version
    sys_info = restricted_load()
    if not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: big-endian checkpoints are not supported")
    state = restricted_load()
    keys = restricted_load()
    storages = {}
    for key in keys:
        dtype, _ = kinds[str(key)]
        (numel,) = struct.unpack("<q", stream.read(8))
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"{path}: truncated storage {key}")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _resolve(state, storages)


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        prefix = pkl[: -len("data.pkl")]
        kinds: dict = {}
        state = _RestrictedUnpickler(io.BytesIO(archive.read(pkl)), kinds).load()
        storages = {key: np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype) for key, (dtype, _) in kinds.items()}
    return _resolve(state, storages)


def load_state_dict(path: str | Path) -> "collections.OrderedDict[str, np.ndarray]":
    """Load a PyTorch state dict as ``{name: numpy array}`` without torch and without unsafe pickles."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as stream:
        return _load_legacy(stream, path)
