// Element-wise math shared by the CPU and CUDA kernels, so that both devices compute the same expressions.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GLIP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GLIP_HOST_DEVICE inline
#endif

namespace glip {

// ---------------------------------------------------------------------------------------------------------------
// Token sigmoid focal loss, element-wise:
//   loss = alpha_t * BCE(x, t) * (1 - p_t)^gamma,  p = sigmoid(x),  p_t = p t + (1 - p)(1 - t),
//   alpha_t = alpha t + (1 - alpha)(1 - t) when alpha >= 0, else 1.
// BCE(x, t) = (1 - t) x - log_sigmoid(x), the expression torch's binary_cross_entropy_with_logits evaluates.

template <typename T>
struct FocalTerms {
  T prob;       // sigmoid(x)
  T bce;        // binary cross-entropy with logits
  T modulator;  // 1 - p_t
};

template <typename T>
GLIP_HOST_DEVICE FocalTerms<T> focal_terms(T x, T t) {
  // One exp serves both the sigmoid and log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)).
  const T e = exp(-fabs(x));
  const T prob = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  const T log_sigmoid = (x < T(0) ? x : T(0)) - log1p(e);
  const T bce = (T(1) - t) * x - log_sigmoid;
  const T p_t = prob * t + (T(1) - prob) * (T(1) - t);
  return {prob, bce, T(1) - p_t};
}

template <typename T>
GLIP_HOST_DEVICE T focal_alpha(T t, T alpha) {
  return alpha >= T(0) ? alpha * t + (T(1) - alpha) * (T(1) - t) : T(1);
}

// m^gamma with the exact products torch uses for the common integer exponents.
template <typename T>
GLIP_HOST_DEVICE T focal_power(T m, T gamma) {
  if (gamma == T(2)) return m * m;
  if (gamma == T(1)) return m;
  if (gamma == T(0)) return T(1);
  return pow(m, gamma);
}

// The loss of one element and, when kWithGrad, its derivative in the same pass:
//   d loss / d x = alpha_t [ (p - t) m^gamma + BCE gamma m^(gamma-1) dm/dx ],  dm/dx = (1 - 2t) p (1 - p).
template <bool kWithGrad, typename T>
GLIP_HOST_DEVICE T token_focal_loss(T x, T t, T alpha, T gamma, T* grad) {
  const FocalTerms<T> f = focal_terms(x, t);
  const T weight = focal_alpha(t, alpha);
  const T modulation = focal_power(f.modulator, gamma);
  if (kWithGrad) {
    T dpow_dm = T(0);
    if (gamma == T(2)) {
      dpow_dm = T(2) * f.modulator;
    } else if (gamma == T(1)) {
      dpow_dm = T(1);
    } else if (gamma != T(0)) {
      dpow_dm = gamma * pow(f.modulator, gamma - T(1));
    }
    const T dm_dx = (T(1) - T(2) * t) * f.prob * (T(1) - f.prob);
    *grad = weight * ((f.prob - t) * modulation + f.bce * dpow_dm * dm_dx);
  }
  return weight * f.bce * modulation;
}

// ---------------------------------------------------------------------------------------------------------------
// Class-aware IoU with the legacy +1 pixel convention of the official ml_nms kernel; boxes of different labels
// overlap by 0.

template <typename T>
GLIP_HOST_DEVICE T legacy_iou(const T* a, const T* b) {
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  const T width = right - left + T(1) > T(0) ? right - left + T(1) : T(0);
  const T height = bottom - top + T(1) > T(0) ? bottom - top + T(1) : T(0);
  const T inter = width * height;
  const T area_a = (a[2] - a[0] + T(1)) * (a[3] - a[1] + T(1));
  const T area_b = (b[2] - b[0] + T(1)) * (b[3] - b[1] + T(1));
  return inter / (area_a + area_b - inter);
}

// ---------------------------------------------------------------------------------------------------------------
// Bilinear sampling of one (height, width) plane at a real position, zero outside; the DCNv2 convention (a sample
// contributes when -1 < y < height and -1 < x < width, out-of-range corners read 0).

struct BilinearCorners {
  int64_t y_low, x_low;  // top-left corner; the others are +1 in each direction
  bool valid;            // false when the position contributes nothing
};

template <typename T>
GLIP_HOST_DEVICE BilinearCorners deform_corners(T y, T x, int64_t height, int64_t width) {
  BilinearCorners c{0, 0, false};
  if (y <= T(-1) || y >= T(height) || x <= T(-1) || x >= T(width)) return c;
  c.y_low = static_cast<int64_t>(floor(y));
  c.x_low = static_cast<int64_t>(floor(x));
  c.valid = true;
  return c;
}

template <typename T>
GLIP_HOST_DEVICE T plane_at(const T* plane, int64_t height, int64_t width, int64_t y, int64_t x) {
  return (y >= 0 && y < height && x >= 0 && x < width) ? plane[y * width + x] : T(0);
}

template <typename T>
GLIP_HOST_DEVICE T deform_bilinear(const T* plane, int64_t height, int64_t width, T y, T x) {
  const BilinearCorners c = deform_corners(y, x, height, width);
  if (!c.valid) return T(0);
  const T ly = y - T(c.y_low), lx = x - T(c.x_low);
  const T hy = T(1) - ly, hx = T(1) - lx;
  return hy * hx * plane_at(plane, height, width, c.y_low, c.x_low) +
         hy * lx * plane_at(plane, height, width, c.y_low, c.x_low + 1) +
         ly * hx * plane_at(plane, height, width, c.y_low + 1, c.x_low) +
         ly * lx * plane_at(plane, height, width, c.y_low + 1, c.x_low + 1);
}

// d deform_bilinear / d y and d / d x at (y, x).
template <typename T>
GLIP_HOST_DEVICE void deform_bilinear_coord_grad(const T* plane, int64_t height, int64_t width, T y, T x, T* grad_y,
                                                 T* grad_x) {
  *grad_y = T(0);
  *grad_x = T(0);
  const BilinearCorners c = deform_corners(y, x, height, width);
  if (!c.valid) return;
  const T ly = y - T(c.y_low), lx = x - T(c.x_low);
  const T v00 = plane_at(plane, height, width, c.y_low, c.x_low);
  const T v01 = plane_at(plane, height, width, c.y_low, c.x_low + 1);
  const T v10 = plane_at(plane, height, width, c.y_low + 1, c.x_low);
  const T v11 = plane_at(plane, height, width, c.y_low + 1, c.x_low + 1);
  *grad_y = lx * (v11 - v01) + (T(1) - lx) * (v10 - v00);
  *grad_x = ly * (v11 - v10) + (T(1) - ly) * (v01 - v00);
}

// Geometry of one deformable-conv call; offsets/mask of sample b start at b * offset_sample_stride (the raw
// per-sample addressing of the official kernel) and are read as (channels, out_h, out_w) blocks.
struct DeformGeometry {
  int64_t channels, height, width;
  int64_t out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t deformable_groups;
  int64_t offset_sample_stride, mask_sample_stride;

  GLIP_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  GLIP_HOST_DEVICE int64_t positions() const { return out_h * out_w; }
  GLIP_HOST_DEVICE int64_t channels_per_group() const { return channels / deformable_groups; }
};

// Sampling position of tap `tap` at output position `pos` for deformable group `group` of one sample.
template <typename T>
GLIP_HOST_DEVICE void deform_position(const DeformGeometry& g, const T* offset, int64_t group, int64_t tap, int64_t pos,
                                      T* y, T* x) {
  const int64_t L = g.positions();
  const int64_t base = (group * 2 * g.taps() + 2 * tap) * L + pos;
  const int64_t ky = tap / g.kernel_w, kx = tap % g.kernel_w;
  const int64_t oy = pos / g.out_w, ox = pos % g.out_w;
  *y = T(oy * g.stride_h - g.pad_h + ky * g.dilation_h) + offset[base];
  *x = T(ox * g.stride_w - g.pad_w + kx * g.dilation_w) + offset[base + L];
}

// ---------------------------------------------------------------------------------------------------------------
// ROIAlign (torchvision semantics): bilinear interpolation that clamps positions in [-1, 0] to 0 and at the last
// row/column, zero outside [-1, size].

template <typename T>
struct RoiSample {
  int64_t y_low, y_high, x_low, x_high;
  T w1, w2, w3, w4;  // weights of (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)
  bool valid;
};

template <typename T>
GLIP_HOST_DEVICE RoiSample<T> roi_sample(int64_t height, int64_t width, T y, T x) {
  RoiSample<T> s{-1, -1, -1, -1, T(0), T(0), T(0), T(0), false};
  if (y < T(-1) || y > T(height) || x < T(-1) || x > T(width)) return s;
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  s.y_low = static_cast<int64_t>(y);
  s.x_low = static_cast<int64_t>(x);
  if (s.y_low >= height - 1) {
    s.y_high = s.y_low = height - 1;
    y = T(s.y_low);
  } else {
    s.y_high = s.y_low + 1;
  }
  if (s.x_low >= width - 1) {
    s.x_high = s.x_low = width - 1;
    x = T(s.x_low);
  } else {
    s.x_high = s.x_low + 1;
  }
  const T ly = y - T(s.y_low), lx = x - T(s.x_low);
  const T hy = T(1) - ly, hx = T(1) - lx;
  s.w1 = hy * hx;
  s.w2 = hy * lx;
  s.w3 = ly * hx;
  s.w4 = ly * lx;
  s.valid = true;
  return s;
}

// The box of one ROI in feature coordinates and its sampling grid.
template <typename T>
struct RoiBox {
  int64_t batch_index;
  T start_h, start_w, bin_h, bin_w;
  int64_t grid_h, grid_w;
};

template <typename T>
GLIP_HOST_DEVICE RoiBox<T> roi_box(const T* roi, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                   int64_t sampling_ratio, bool aligned) {
  RoiBox<T> b;
  b.batch_index = static_cast<int64_t>(roi[0]);
  const T offset = aligned ? T(0.5) : T(0);
  b.start_w = roi[1] * spatial_scale - offset;
  b.start_h = roi[2] * spatial_scale - offset;
  T roi_w = roi[3] * spatial_scale - offset - b.start_w;
  T roi_h = roi[4] * spatial_scale - offset - b.start_h;
  if (!aligned) {
    // Legacy mode forces malformed ROIs to be at least 1x1.
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  b.bin_h = roi_h / T(pooled_h);
  b.bin_w = roi_w / T(pooled_w);
  b.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_h / T(pooled_h)));
  b.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(ceil(roi_w / T(pooled_w)));
  return b;
}

template <typename T>
GLIP_HOST_DEVICE T roi_sample_y(const RoiBox<T>& b, int64_t ph, int64_t iy) {
  return b.start_h + T(ph) * b.bin_h + T(static_cast<float>(iy) + 0.5f) * b.bin_h / T(b.grid_h);
}

template <typename T>
GLIP_HOST_DEVICE T roi_sample_x(const RoiBox<T>& b, int64_t pw, int64_t ix) {
  return b.start_w + T(pw) * b.bin_w + T(static_cast<float>(ix) + 0.5f) * b.bin_w / T(b.grid_w);
}

}  // namespace glip
