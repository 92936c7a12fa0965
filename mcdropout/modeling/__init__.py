"""Building and training MC dropout models: the standard MLP, training into the store, the
built-in default models, reading tables, and hyper-parameter search (``mcdropout tune``)."""
