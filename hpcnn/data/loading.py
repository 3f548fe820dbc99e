"""One entry to every dataset: one a registry names (files or synthetic), or an HDF5 store.

Kept apart from :mod:`hpcnn.data.registry` and :mod:`hpcnn.data.store` so that neither imports
the other's way round: the store builds on the registry's readers, and this module on both.
"""

from hpcnn.data import registry, store


def load_dataset(name, data_dir=None, **kwargs):
    """``h5:FILE``: the store (:func:`hpcnn.data.store.open_store`, read on demand); any other
    name: :func:`hpcnn.data.registry.load_dataset` (same arguments)."""
    if name.startswith(store.PREFIX):
        return store.open_store(name[len(store.PREFIX):])
    return registry.load_dataset(name, data_dir, **kwargs)
