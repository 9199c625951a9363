"""Private implementation of `tangents.lift` (``from_torch``): torch.fx graphs -> stax layers."""
