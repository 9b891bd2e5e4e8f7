"""Domain-adaptive pre-training (DAPT): continue masked-LM training of the encoder on AG News training texts.

``python -m agnews.pretrain`` (or a ``kind: mlm`` stage of ``agnews.train stages=[...]``) runs
:func:`agnews.pretraining.run.pretrain`: the masked-LM model of the configured architecture (:mod:`.model`), the
training split's texts only (:mod:`.data`; the test split is never read), a Lightning module logging
``train/mlm_loss`` and ``val/mlm_loss`` (:mod:`.module`), and a run directory whose ``model/`` a classifier starts from
with ``model.pretrained=<run>``. See docs/recipes.md (domain-adaptive pre-training).
"""
