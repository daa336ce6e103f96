"""Measuring tools, apart from the benchmark's runtime: ``otbench perf`` (:mod:`.perf`)."""
