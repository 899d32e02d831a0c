"""Tagger core: lexical measures + analyzer tags in the canonical vocabulary.

Public API: ``hybridpref.tagger.core.Tagger`` / ``TagBatch`` and
``hybridpref.routing_model.bins.ReferenceBins``. Importing this package loads no model
(torch, transformers, spaCy are imported inside ``Tagger.load``).
"""
