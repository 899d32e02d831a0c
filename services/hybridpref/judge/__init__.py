"""Judge service core: LM preference labels with position-bias control and a confidence.

Public API: ``hybridpref.judge.core`` (``Judge``, ``Judgement``, ``JudgeBackend``); backends in
``embedded``, ``openai_backend``, ``replay``; prompt templates in ``templates``; a loopback
OpenAI-compatible server over the embedded model in ``openai_server``. Imports here stay light.
"""
