"""vlpeft: parameter- and computation-efficient transfer learning of vision-language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # vlpeft.load (the Python API) imports torch and the model code: only when asked, so `import vlpeft` stays light
    if name == "load":
        from vlpeft.api import load

        return load
    raise AttributeError(f"module 'vlpeft' has no attribute {name!r}")
