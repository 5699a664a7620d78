"""Stage 2's core, below both tasks: what segmentation (``mdm.segment``) and image classification
(``mdm.classify``) share, so that neither imports the other. Taps on the frozen U-Net and their
keyed corruption (``taps``), early stopping, the run folder, the figures of a selection and a fit,
the classical filter bank, and the sources' splits and roots."""
