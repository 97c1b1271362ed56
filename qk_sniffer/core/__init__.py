"""The core every layer may use: the typed configs, names, ranges, the registry and the error type.

- :mod:`.config`    the Hydra structured configs (one dataclass per group) and where conf/ lives
- :mod:`.naming`    config names ``l{LL}h{HH}{q|k}``
- :mod:`.ranges`    small range helpers
- :mod:`.registry`  decorator registries with clear unknown/duplicate-name errors
- :mod:`.arrow`     the row schema and Arrow arrays, without pyarrow's pandas import
- :mod:`.child`     helper processes: JSON lines over pipes, and the helper's side of them
- :mod:`.imports`   heavy imports with the garbage collector paused, then frozen
- :mod:`.errors`    :class:`~.errors.UserError`: one message and an exit code, never a traceback

May import: nothing else of the package.
"""
