"""Sequential model: a list of layers, with all parameters and gradients in two flat buffers.

Flat buffers make the optimizer one pass over memory and let data parallelism reduce gradients
with a few large ``Allreduce`` calls on contiguous float32 memory (each layer's gradient is a view
into ``flat_grads``, so nothing is copied in or out).
"""

import numpy as np

from hpcnn import profile


class Sequential:
    def __init__(self, layers, input_shape, name="net"):
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.name = name
        self._flatten()

    # parameters -------------------------------------------------------------------------------
    def params(self):
        """All parameters, in layer order (the order every rank must agree on)."""
        return [p for layer in self.layers for p in layer.params()]

    def named_params(self):
        return [(p.name, p) for p in self.params()]

    def num_params(self):
        return int(self.flat_params.size)

    def _flatten(self):
        """Move every parameter and gradient into one flat float32 buffer; layers keep views."""
        ps = self.params()
        total = sum(p.data.size for p in ps)
        self.flat_params = np.zeros(total, dtype=np.float32)
        self.flat_grads = np.zeros(total, dtype=np.float32)
        self.offsets = []
        off = 0
        for p in ps:
            n = p.data.size
            self.flat_params[off:off + n] = p.data.ravel()
            p.data = self.flat_params[off:off + n].reshape(p.data.shape)
            p.grad = self.flat_grads[off:off + n].reshape(p.data.shape)
            self.offsets.append((off, n))
            off += n

    def zero_grad(self):
        self.flat_grads.fill(0.0)

    def state_dict(self):
        return {name: p.data.copy() for name, p in self.named_params()}

    def load_state_dict(self, state):
        mine = dict(self.named_params())
        if set(state) != set(mine):
            raise ValueError(f"parameter names differ: expected {sorted(mine)}, "
                             f"got {sorted(state)}")
        for name, p in mine.items():
            if state[name].shape != p.data.shape:
                raise ValueError(f"{name}: shape {state[name].shape} != {p.data.shape}")
            p.data[...] = state[name]

    # compute ----------------------------------------------------------------------------------
    def forward(self, x, train=True):
        if profile.enabled():
            for layer in self.layers:
                with profile.region(layer.kind, f"{layer.name} fwd"):
                    x = layer.forward(x, train)
            return x
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, on_layer_done=None, input_grad=False):
        """Backpropagate ``dy`` through the layers in reverse order.

        ``on_layer_done(i)`` is called as soon as layer ``i``'s gradients are final, so that a
        data-parallel wrapper can start reducing them while earlier layers still compute.
        Returns the gradient with respect to the input with ``input_grad=True``; by default it
        returns None and the first layer skips that work (as PyTorch does for inputs that do
        not require grad): for a first convolution, its data-gradient GEMM and col2im.
        """
        prof = profile.enabled()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            want = input_grad or i > 0
            if prof:
                with profile.region(layer.kind, f"{layer.name} bwd"):
                    dy = layer.backward(dy, want)
            else:
                dy = layer.backward(dy, want)
            if on_layer_done is not None:
                on_layer_done(i)
        return dy

    def summary(self):
        """One line per layer: name, output shape, parameter count."""
        lines, shape = [], self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
            n = sum(p.data.size for p in layer.params())
            lines.append(f"{layer.name:<10} {str(shape):<16} {n:>9,}")
        return lines
