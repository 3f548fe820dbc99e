"""Naive float64 reference implementations: the ground truth for tests/test_kernels.py.

Plain Python loops that follow the definitions (and Caffe's pooling rules) word for word. They are
slow on purpose: keep the test shapes small. Every function takes and returns float64 arrays
(inputs are converted), and never calls hpcnn.
"""

import math

import numpy as np


def pair(v):
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def pad_nchw(x, ph, pw):
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


# ---------------------------------------------------------------------------------------------
# convolution


def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """y[n, k, p, q] = b[k] + sum_{c, r, s} x_pad[n, c, p*sh + r, q*sw + s] * w[k, c, r, s]."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P = (H + 2 * ph - R) // sh + 1
    Q = (W + 2 * pw - S) // sw + 1
    xp = pad_nchw(x, ph, pw)
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    total = 0.0 if b is None else float(b[k])
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                total += xp[n, c, p * sh + r, q * sw + s] * w[k, c, r, s]
                    y[n, k, p, q] = total
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0):
    """(dx, dw, db) of conv2d_forward, by sending each dy[n, k, p, q] back along its products."""
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    _, _, P, Q = dy.shape
    xp = pad_nchw(x, ph, pw)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    db = np.zeros(K)
    for n in range(N):
        for k in range(K):
            for p in range(P):
                for q in range(Q):
                    g = dy[n, k, p, q]
                    db[k] += g
                    for c in range(C):
                        for r in range(R):
                            for s in range(S):
                                dxp[n, c, p * sh + r, q * sw + s] += g * w[k, c, r, s]
                                dw[k, c, r, s] += g * xp[n, c, p * sh + r, q * sw + s]
    dx = dxp[:, :, ph:ph + H, pw:pw + W].copy()
    return dx, dw, db


def im2col(x, kernel_size, stride=1, padding=0):
    """col[c*R*S + r*S + s, n*P*Q + p*Q + q] = x_pad[n, c, p*sh + r, q*sw + s]."""
    x = np.asarray(x, dtype=np.float64)
    (R, S), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, C, H, W = x.shape
    P = (H + 2 * ph - R) // sh + 1
    Q = (W + 2 * pw - S) // sw + 1
    xp = pad_nchw(x, ph, pw)
    col = np.zeros((C * R * S, N * P * Q))
    for c in range(C):
        for r in range(R):
            for s in range(S):
                for n in range(N):
                    for p in range(P):
                        for q in range(Q):
                            col[c * R * S + r * S + s, n * P * Q + p * Q + q] = \
                                xp[n, c, p * sh + r, q * sw + s]
    return col


def col2im(col, x_shape, kernel_size, stride=1, padding=0):
    """The adjoint of im2col: every column entry is added back to the pixel it was copied from."""
    col = np.asarray(col, dtype=np.float64)
    (R, S), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    N, C, H, W = x_shape
    P = (H + 2 * ph - R) // sh + 1
    Q = (W + 2 * pw - S) // sw + 1
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for c in range(C):
        for r in range(R):
            for s in range(S):
                for n in range(N):
                    for p in range(P):
                        for q in range(Q):
                            xp[n, c, p * sh + r, q * sw + s] += \
                                col[c * R * S + r * S + s, n * P * Q + p * Q + q]
    return xp[:, :, ph:ph + H, pw:pw + W].copy()


# ---------------------------------------------------------------------------------------------
# pooling (Caffe's rules)


def pool_output_size(size, kernel, stride, pad):
    """Caffe: ceil((size + 2*pad - kernel) / stride) + 1, minus 1 if the last window would start
    in the right/bottom padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_args(kernel_size, stride, padding):
    kh, kw = pair(kernel_size)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    ph, pw = pair(padding)
    return kh, kw, sh, sw, ph, pw


def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """(y, argmax): max over each window clipped to the image; argmax = h*W + w of the first
    maximum in row-major order (strict '>' as in Caffe)."""
    x = np.asarray(x, dtype=np.float64)
    kh, kw, sh, sw, ph, pw = _pool_args(kernel_size, stride, padding)
    N, C, H, W = x.shape
    P = pool_output_size(H, kh, sh, ph)
    Q = pool_output_size(W, kw, sw, pw)
    y = np.zeros((N, C, P, Q))
    argmax = np.zeros((N, C, P, Q), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    hstart, wstart = p * sh - ph, q * sw - pw
                    hend, wend = min(hstart + kh, H), min(wstart + kw, W)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    best, where = -math.inf, -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if x[n, c, h, w] > best:
                                best, where = x[n, c, h, w], h * W + w
                    y[n, c, p, q] = best
                    argmax[n, c, p, q] = where
    return y, argmax


def maxpool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """dx: each dy goes to the (first) maximum of its window, found again from x."""
    dy = np.asarray(dy, dtype=np.float64)
    _, argmax = maxpool2d_forward(x, kernel_size, stride, padding)
    N, C, H, W = np.shape(x)
    dx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            for p in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    dx[n, c, argmax[n, c, p, q]] += dy[n, c, p, q]
    return dx.reshape(N, C, H, W)


def _avg_window(p, q, kh, kw, sh, sw, ph, pw, H, W):
    """Caffe's average-pooling window: (h range, w range, pool_size before clipping)."""
    hstart, wstart = p * sh - ph, q * sw - pw
    hend, wend = min(hstart + kh, H + ph), min(wstart + kw, W + pw)
    pool_size = (hend - hstart) * (wend - wstart)
    hstart, wstart = max(hstart, 0), max(wstart, 0)
    hend, wend = min(hend, H), min(wend, W)
    return range(hstart, hend), range(wstart, wend), pool_size


def avgpool2d_forward(x, kernel_size, stride=None, padding=0):
    x = np.asarray(x, dtype=np.float64)
    kh, kw, sh, sw, ph, pw = _pool_args(kernel_size, stride, padding)
    N, C, H, W = x.shape
    P = pool_output_size(H, kh, sh, ph)
    Q = pool_output_size(W, kw, sw, pw)
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    hs, ws, pool_size = _avg_window(p, q, kh, kw, sh, sw, ph, pw, H, W)
                    total = 0.0
                    for h in hs:
                        for w in ws:
                            total += x[n, c, h, w]
                    y[n, c, p, q] = total / pool_size
    return y


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    dy = np.asarray(dy, dtype=np.float64)
    kh, kw, sh, sw, ph, pw = _pool_args(kernel_size, stride, padding)
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H, W))
    for n in range(N):
        for c in range(C):
            for p in range(dy.shape[2]):
                for q in range(dy.shape[3]):
                    hs, ws, pool_size = _avg_window(p, q, kh, kw, sh, sw, ph, pw, H, W)
                    for h in hs:
                        for w in ws:
                            dx[n, c, h, w] += dy[n, c, p, q] / pool_size
    return dx


# ---------------------------------------------------------------------------------------------
# pointwise, bias, linear, loss


def relu_forward(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, 0.0)


def relu_backward(dy, y):
    return np.where(np.asarray(y) > 0, np.asarray(dy, dtype=np.float64), 0.0)


def bias_forward(x, b):
    x = np.asarray(x, dtype=np.float64).copy()
    for c in range(x.shape[1]):
        x[:, c] += float(b[c])
    return x


def bias_backward(dy):
    dy = np.asarray(dy, dtype=np.float64)
    return np.array([dy[:, c].sum() for c in range(dy.shape[1])])


def linear_forward(x, w, b=None):
    """y[n, o] = b[o] + sum_i x[n, i] * w[o, i]."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    y = np.zeros((x.shape[0], w.shape[0]))
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            y[n, o] = (0.0 if b is None else float(b[o])) + sum(
                x[n, i] * w[o, i] for i in range(x.shape[1]))
    return y


def linear_backward(dy, x, w):
    dy = np.asarray(dy, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            dx[n] += dy[n, o] * w[o]
            dw[o] += dy[n, o] * x[n]
    return dx, dw, dy.sum(axis=0)


def softmax_cross_entropy(logits, labels):
    """loss = mean_n (log sum_j exp(z[n, j]) - z[n, label]), dlogits = (softmax - onehot) / N,
    with the row max subtracted first so that exp never overflows."""
    z = np.asarray(logits, dtype=np.float64)
    N, M = z.shape
    loss = 0.0
    dz = np.zeros((N, M))
    for n in range(N):
        m = max(z[n])
        e = [math.exp(z[n, j] - m) for j in range(M)]
        total = sum(e)
        loss += math.log(total) - (z[n, labels[n]] - m)
        for j in range(M):
            dz[n, j] = (e[j] / total - (1.0 if j == labels[n] else 0.0)) / N
    return loss / N, dz
