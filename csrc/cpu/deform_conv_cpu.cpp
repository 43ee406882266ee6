// Modulated deformable convolution (DCNv2) with the official kernel's raw per-sample offset/mask addressing: the
// CPU loops of deform_conv_driver.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../deform_conv_driver.h"

namespace glip {
namespace {

// One bilinear sampling point: the flat plane indices of its four corners (-1 outside the image) and its
// fractional position. Points depend on (deformable group, tap, position) only, so they are computed once per
// sample and shared by all channels of the group.
template <typename T>
struct SamplePoint {
  int64_t corner[4];  // (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)
  T ly, lx;

  T weight(int q) const { return (q / 2 ? ly : T(1) - ly) * (q % 2 ? lx : T(1) - lx); }
};

template <typename T>
std::vector<SamplePoint<T>> sample_points(const DeformGeometry& g, const T* offset) {
  const int64_t K = g.taps(), L = g.positions();
  std::vector<SamplePoint<T>> points(g.deformable_groups * K * L);
  at::parallel_for(0, g.deformable_groups * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gk = begin; gk < end; ++gk) {
      for (int64_t pos = 0; pos < L; ++pos) {
        T y, x;
        deform_position(g, offset, gk / K, gk % K, pos, &y, &x);
        SamplePoint<T>& point = points[gk * L + pos];
        const BilinearCorners c = deform_corners(y, x, g.height, g.width);
        point.ly = c.valid ? y - T(c.y_low) : T(0);
        point.lx = c.valid ? x - T(c.x_low) : T(0);
        for (int q = 0; q < 4; ++q) {
          const int64_t yy = c.y_low + q / 2, xx = c.x_low + q % 2;
          const bool inside = c.valid && yy >= 0 && yy < g.height && xx >= 0 && xx < g.width;
          point.corner[q] = inside ? yy * g.width + xx : -1;
        }
      }
    }
  });
  return points;
}

// Corner values of a point in one plane (0 outside the image).
template <typename T>
void corner_values(const SamplePoint<T>& point, const T* plane, T* v) {
  for (int q = 0; q < 4; ++q) v[q] = point.corner[q] >= 0 ? plane[point.corner[q]] : T(0);
}

// The CPU loops. Each parallel task owns whole output rows (channels, or position ranges), so no atomics.
struct CpuDeformKernels {
  // columns (C*K, L) of one sample: mask-weighted bilinear samples of every channel at every tap and position.
  template <typename T>
  static void im2col(const DeformGeometry& g, const T* image, const T* offset, const T* mask, T* columns) {
    const int64_t K = g.taps(), L = g.positions();
    const std::vector<SamplePoint<T>> points = sample_points(g, offset);
    at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const T* plane = image + c * g.height * g.width;
        const int64_t first = c / g.channels_per_group() * K;
        for (int64_t k = 0; k < K; ++k) {
          const SamplePoint<T>* row_points = points.data() + (first + k) * L;
          const T* mask_row = mask + (first + k) * L;
          T* row = columns + (c * K + k) * L;
          for (int64_t pos = 0; pos < L; ++pos) {
            T v[4];
            corner_values(row_points[pos], plane, v);
            const SamplePoint<T>& p = row_points[pos];
            row[pos] =
                mask_row[pos] * (p.weight(0) * v[0] + p.weight(1) * v[1] + p.weight(2) * v[2] + p.weight(3) * v[3]);
          }
        }
      }
    });
  }

  // Scatter of the column gradients to the input image (transpose of the bilinear sampling), per channel.
  template <typename T>
  static void col2im(const DeformGeometry& g, const T* offset, const T* mask, const T* grad_columns, T* grad_image) {
    const int64_t K = g.taps(), L = g.positions();
    const std::vector<SamplePoint<T>> points = sample_points(g, offset);
    at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        T* plane = grad_image + c * g.height * g.width;
        const int64_t first = c / g.channels_per_group() * K;
        for (int64_t k = 0; k < K; ++k) {
          const SamplePoint<T>* row_points = points.data() + (first + k) * L;
          const T* mask_row = mask + (first + k) * L;
          const T* row = grad_columns + (c * K + k) * L;
          for (int64_t pos = 0; pos < L; ++pos) {
            const SamplePoint<T>& p = row_points[pos];
            const T value = row[pos] * mask_row[pos];
            for (int q = 0; q < 4; ++q) {
              if (p.corner[q] >= 0) plane[p.corner[q]] += p.weight(q) * value;
            }
          }
        }
      }
    });
  }

  // Gradients of the offsets and mask of one sample: sums over the channels of each deformable group, each
  // task owning a range of output positions.
  template <typename T>
  static void offset_mask_grad(const DeformGeometry& g, const T* image, const T* offset, const T* mask,
                               const T* grad_columns, T* grad_offset, T* grad_mask) {
    const int64_t K = g.taps(), L = g.positions(), per_group = g.channels_per_group();
    const std::vector<SamplePoint<T>> points = sample_points(g, offset);
    at::parallel_for(0, L, 256, [&](int64_t begin, int64_t end) {
      std::vector<T> sum_y(end - begin), sum_x(end - begin), sum_mask(end - begin);
      for (int64_t gk = 0; gk < g.deformable_groups * K; ++gk) {
        const int64_t group = gk / K, k = gk % K;
        const SamplePoint<T>* row_points = points.data() + gk * L;
        std::fill(sum_y.begin(), sum_y.end(), T(0));
        std::fill(sum_x.begin(), sum_x.end(), T(0));
        std::fill(sum_mask.begin(), sum_mask.end(), T(0));
        for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
          const T* plane = image + c * g.height * g.width;
          const T* row = grad_columns + (c * K + k) * L;
          for (int64_t pos = begin; pos < end; ++pos) {
            const SamplePoint<T>& p = row_points[pos];
            T v[4];
            corner_values(p, plane, v);
            const T dcol = row[pos];
            sum_y[pos - begin] += dcol * (p.lx * (v[3] - v[1]) + (T(1) - p.lx) * (v[2] - v[0]));
            sum_x[pos - begin] += dcol * (p.ly * (v[3] - v[2]) + (T(1) - p.ly) * (v[1] - v[0]));
            sum_mask[pos - begin] +=
                dcol * (p.weight(0) * v[0] + p.weight(1) * v[1] + p.weight(2) * v[2] + p.weight(3) * v[3]);
          }
        }
        const int64_t offset_row = (group * 2 * K + 2 * k) * L;
        for (int64_t pos = begin; pos < end; ++pos) {
          const T m = mask[gk * L + pos];
          grad_offset[offset_row + pos] = m * sum_y[pos - begin];
          grad_offset[offset_row + L + pos] = m * sum_x[pos - begin];
          grad_mask[gk * L + pos] = sum_mask[pos - begin];
        }
      }
    });
  }
};

at::Tensor deform_conv_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                           const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride_h,
                           int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                           int64_t groups, int64_t deformable_groups) {
  const DeformConvParams p{stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, deformable_groups};
  return deform_conv_forward<CpuDeformKernels>(input, offset, mask, weight, bias, p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
    int64_t dilation_w, int64_t groups, int64_t deformable_groups) {
  const DeformConvParams p{stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, deformable_groups};
  return deform_conv_backward<CpuDeformKernels>(grad, input, offset, mask, weight, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CPU, m) {
  m.impl("modulated_deform_conv", &deform_conv_cpu);
  m.impl("modulated_deform_conv_backward", &deform_conv_backward_cpu);
}

}  // namespace glip
