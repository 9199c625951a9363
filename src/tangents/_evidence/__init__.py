"""The private parts of `tangents.evidence`: the experiments, the report record, the figures."""
