"""Zero-shot evaluation as the BLOOMZ paper runs it: prompted multiple-choice examples, their
choices packed into rows and scored by rank classification, and the accuracies aggregated per
prompt, dataset and language (medians over prompts, BLOOM's seen/unseen languages)."""
