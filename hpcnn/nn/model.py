"""Sequential model: a list of layers, split into a feature stage and a head.

The feature stage is the convolutions and pooling (everything up to and including the flatten),
the head the fully connected layers after it. A data-parallel strategy treats them alike; the
hybrid strategy runs the features data-parallel and splits the head over ranks.

On construction every parameter and gradient moves into one flat buffer
(:class:`hpcnn.parallel.flatbuf.FlatGroup`): the serial optimizer makes one pass over memory and
data parallelism reduces gradients with a few large collectives. A strategy may regroup them.
"""

from hpcnn import profile
from hpcnn.parallel.flatbuf import FlatGroup, unique_params


class Sequential:
    """Layers applied in order; ``head_start`` is the index of the first head layer (default:
    after the last ``Flatten``, or 0 when there is none)."""

    def __init__(self, layers, input_shape, name="net", head_start=None):
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        self.name = name
        if head_start is None:
            flat = [i for i, layer in enumerate(self.layers) if layer.kind == "layout"]
            head_start = flat[-1] + 1 if flat else 0
        if not 0 <= head_start <= len(self.layers):
            raise ValueError(f"head_start {head_start} is outside 0..{len(self.layers)}")
        self.head_start = int(head_start)
        self.group = FlatGroup(self.params())

    @property
    def features(self):
        """The feature-stage layers (convolutions, pooling, flatten)."""
        return self.layers[:self.head_start]

    @property
    def head(self):
        """The head layers (fully connected, with their activations)."""
        return self.layers[self.head_start:]

    # parameters -------------------------------------------------------------------------------
    def params(self):
        """All parameters, in layer order (the order every rank must agree on), each once."""
        return unique_params(p for layer in self.layers for p in layer.params())

    def named_params(self):
        return [(p.name, p) for p in self.params()]

    def num_params(self):
        """Parameters of the whole (unsplit) model."""
        import math

        return sum(math.prod(p.full_shape) for p in self.params())

    # the serial flat buffers (a strategy may regroup the parameters) -------------------------
    @property
    def flat_params(self):
        return self.group.data

    @property
    def flat_grads(self):
        return self.group.grad

    @property
    def offsets(self):
        return self.group.offsets

    def zero_grad(self):
        for p in self.params():
            p.grad.fill(0.0)

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
    def forward(self, x, train=True, upto=None):
        """Run layers ``0 .. upto-1`` (default all) on ``x``."""
        layers = self.layers if upto is None else self.layers[:upto]
        if profile.enabled():
            for layer in layers:
                with profile.region(layer.kind, f"{layer.name} fwd"):
                    x = layer.forward(x, train)
            return x
        for layer in layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, on_layer_done=None, input_grad=False, upto=None):
        """Backpropagate ``dy`` through layers ``upto-1 .. 0`` (default all) in reverse order.

        ``on_layer_done(i)`` is called as soon as layer ``i``'s gradients are final, so that a
        data-parallel wrapper can start reducing them while earlier layers still compute.
        Returns the gradient with respect to the input with ``input_grad=True``; by default it
        returns None and the first layer skips that work (as PyTorch does for inputs that do
        not require grad): for a first convolution, its data-gradient GEMM and col2im.
        """
        prof = profile.enabled()
        top = len(self.layers) if upto is None else upto
        for i in range(top - 1, -1, -1):
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
