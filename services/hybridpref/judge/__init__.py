"""Judge service core: LM preference labels with position-bias control and a confidence.

Public API: ``hybridpref.judge.core`` (``Judge``, ``Judgement``, ``JudgeBackend``); backends in
``embedded``, ``openai_backend``, ``replay``, ``learned``; prompt templates in ``templates``.
Imports here stay light.
"""
