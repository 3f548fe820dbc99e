"""Reading HDF5 files from outside without trusting them: checks made before any data is read.

Used by the readers of checkpoints and dataset stores. Attributes are read only after their type
is checked (a variable-length string is a pointer into the file's heap, and a mutated one has
made HDF5 hang for minutes); datasets are reached only through hard links and must keep their
data in the file itself (no external or virtual storage: a dataset could otherwise read
``/etc/hostname``).
"""

from hpcnn.errors import DataError

MAX_ATTR_BYTES = 16 << 20  # the largest attribute hpcnn writes is a checkpoint's metadata


def attr(f, name, kinds="S"):
    """Attribute ``name`` of ``f``, after checking that it is a scalar of a fixed-size type of
    ``kinds`` (numpy dtype kinds; "S": a fixed-length string, returned decoded). DataError (with
    no file name: the caller adds it) otherwise."""
    if name not in f.attrs:
        raise DataError(f"attribute {name} is missing")
    aid = f.attrs.get_id(name)
    if aid.dtype.kind not in kinds or aid.shape != ():
        raise DataError(f"attribute {name} is {aid.dtype} {aid.shape}, not a scalar of the "
                        f"expected type")
    if aid.dtype.itemsize > MAX_ATTR_BYTES:  # a header may declare any size: bound it first
        raise DataError(f"attribute {name} declares {aid.dtype.itemsize} bytes (limit "
                        f"{MAX_ATTR_BYTES})")
    value = f.attrs[name]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise DataError(f"attribute {name} is not UTF-8 text") from None
    return value


def datasets(group, prefix=""):
    """Every dataset below ``group`` as ``(name, dataset)``; DataError on a link that is not a
    hard link, a dataset with external or virtual storage, or an object of another kind."""
    import h5py

    for key in group:
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise DataError(f"{type(link).__name__} {name!r} (only plain datasets are allowed)")
        obj = group[key]
        if isinstance(obj, h5py.Group):
            yield from datasets(obj, name + "/")
        elif isinstance(obj, h5py.Dataset):
            if obj.external or obj.is_virtual:
                raise DataError(f"dataset {name!r} has external or virtual storage")
            yield name, obj
        else:
            raise DataError(f"object {name!r} is not a dataset")
