"""Lottery tickets by iterative magnitude pruning with rewinding: in pretrained BERT, and from scratch.

The shared runner sits at this level: ``runner`` (rounds, controls, trials, resume, rewinding),
``pruning_rules`` (global and layer-wise rules), ``ticket_masks`` (mask bookkeeping, storage),
``ticket_report`` (statistics, matching rule, CSV, plots), ``ticket_options`` (what every job's
options share: name lists, the rewind point, YAML recipes). A domain is one file that says what a
job is, in the subfolder of its product:

- ``bert/``: ``llmprune imp`` and ``llmprune glue``. ``bert_domain`` (a pretrained encoder fine-tuned
  on a text task, Chen et al. 2020) with ``imp_options``, ``schedule``, ``text_tasks``,
  ``task_metrics``, ``features``, ``encoder``, ``fine_tuning``, ``ticket_folder``, ``imp_report``.
- ``scratch/``: ``llmprune lth``. ``vision_domain`` (LeNet, Conv-2/4/6 and MLPs trained from
  scratch, Frankle & Carbin 2019) with ``lth_options``, ``vision_models``, ``vision_data``,
  ``stacked``, ``lth_report``.
"""
