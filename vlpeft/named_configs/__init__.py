"""Named configs of the seed repositories beyond ViLT-DAS / DVP / METER, one module per repository; each module
registers its configs through ``vlpeft.config.named`` when ``vlpeft.config`` imports it."""
