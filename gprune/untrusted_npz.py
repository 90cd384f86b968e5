"""Reading a `.npz` that someone else wrote, without trusting it (`np.load` trusts it).

`np.load` reads every member whole and allocates whatever shape a member's header declares, so a 3 MB zip
whose members decompress to gigabytes (a zip bomb) is read into memory. Here each member must be one of the
expected arrays, and before a byte of it is decompressed its declared size must fit what its expected shape
needs; it is then read through a reader that stops one byte past that bound (the declared size is not trusted
alone), and its header's dtype and shape are checked before numpy allocates the array.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

NPY_SUFFIX = ".npy"
# Bytes before an array's data in a `.npy` member: magic, version, header length and the header itself
# (numpy pads it to 64 bytes; a few hundred is plenty for any dtype and shape written here).
HEADER_BYTES = 4096
KIND_NAMES = {"b": "bool", "i": "signed integer", "f": "float"}


@dataclass(frozen=True)
class ArraySpec:
    """What one member must be: a dtype of one of `kinds` ("b" bool, "i" signed integer, "f" float; native
    byte order, at most 8 bytes an item) and a shape whose entries are exact lengths or `range`s of them."""

    kinds: str
    shape: tuple[int | range, ...]

    @property
    def max_bytes(self) -> int:
        """The most bytes a member of this spec can hold (header included)."""
        longest = [dim[-1] if isinstance(dim, range) else dim for dim in self.shape]
        return HEADER_BYTES + (1 if self.kinds == "b" else 8) * math.prod(longest)

    def allows(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            length in dim if isinstance(dim, range) else length == dim for length, dim in zip(shape, self.shape))

    def describe(self) -> str:
        dims = [f"{dim.start}…{dim[-1]}" if isinstance(dim, range) else str(dim) for dim in self.shape]
        return f"{' or '.join(KIND_NAMES[kind] for kind in self.kinds)} of shape ({', '.join(dims)}{',' * (len(dims) == 1)})"


def max_file_bytes(specs: dict[str, ArraySpec]) -> int:
    """The largest `.npz` that can hold `specs`: every member at its bound, stored (deflate never grows data by
    more than a few bytes per 16 KiB block), plus its zip headers."""
    return sum(spec.max_bytes + spec.max_bytes // 1024 + 1024 for spec in specs.values()) + 1024


def read_npz(raw: bytes, specs: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    """The arrays of the `.npz` file `raw`: exactly the members `specs` names (`KEY.npy` for each key), each of
    its spec. ValueError saying which member is wrong and how; zipfile.BadZipFile for a damaged archive."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = archive.infolist()
        names = [member.filename for member in members]
        if len(names) != len(set(names)):
            raise ValueError("its archive holds two members of one name")
        unexpected = [name for name in names if name not in {key + NPY_SUFFIX for key in specs}]
        if unexpected:
            raise ValueError(f"it holds arrays its metadata does not call for: {_some(unexpected)}")
        missing = [key for key in specs if key + NPY_SUFFIX not in names]
        if missing:
            raise ValueError(f"it lacks {_some(missing)}")
        arrays = {}
        for member in members:
            key = member.filename[: -len(NPY_SUFFIX)]
            arrays[key] = _read_member(archive, member, key, specs[key])
        return arrays


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, key: str, spec: ArraySpec) -> np.ndarray:
    bound = spec.max_bytes
    if member.file_size > bound:
        raise ValueError(f"{key} declares {member.file_size:,} bytes, more than the {bound:,} its shape needs")
    with archive.open(member) as stream:
        data = stream.read(bound + 1)  # never more than the bound, whatever the member really holds
    if len(data) > bound:
        raise ValueError(f"{key} holds more than the {bound:,} bytes its shape needs")
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read_header(buffer)
    except (ValueError, KeyError):  # numpy's message quotes the header: the file's text, not ours to log
        raise ValueError(f"{key} has no readable .npy header") from None
    if dtype.kind not in spec.kinds or dtype.hasobject or not dtype.isnative or dtype.itemsize > 8:
        raise ValueError(f"{key} holds {dtype.str} values, not {spec.describe()}")
    if not spec.allows(shape):
        raise ValueError(f"{key} has shape {shape}, not {spec.describe()}")
    if len(data) - buffer.tell() != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{key} holds {len(data) - buffer.tell():,} bytes of values; its shape {shape} needs "
                         f"{math.prod(shape) * dtype.itemsize:,}")
    buffer.seek(0)
    return np.lib.format.read_array(buffer, allow_pickle=False)


def _some(names: list[str], shown: int = 3) -> str:
    """A few of `names` (which came from the file), quoted and cut short."""
    listed = ", ".join(repr(name[:40]) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")
