"""Experiments over the library: cost benchmarks (CPU and the GPU preset), run comparisons and
studies; the tools are thin command lines over these modules."""
