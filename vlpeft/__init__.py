"""vlpeft: parameter- and computation-efficient transfer learning of vision-language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load":
        from vlpeft.loading import load  # defers torch and the model code: `import vlpeft` stays light

        return load
    raise AttributeError(f"module 'vlpeft' has no attribute {name!r}")
