"""prefloop: close the human-feedback loop on a language model.

The repository root is this package: annotate/, train/, evaluate/ and app.py install as
prefloop.annotate, prefloop.train, prefloop.evaluate and prefloop.app, so nothing generic
(Hugging Face's `evaluate`, anyone's `app`) is shadowed in site-packages.
"""

__version__ = "0.1.0"
