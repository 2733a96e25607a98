"""Named configs of the seed repositories beyond ViLT-DAS / DVP / METER, one module per repository, as data: each
module's ``register(named, loss_names)`` adds its configs, and ``vlpeft.config`` calls it (no import side effect;
the modules import nothing of the project beyond each other's tables: ``video`` reads ``vl_adapter``'s)."""
