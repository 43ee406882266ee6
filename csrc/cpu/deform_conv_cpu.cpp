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
// range of positions and shared by all channels of the group.
template <typename T>
struct SamplePoint {
  int64_t corner[4];  // (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)
  T ly, lx;

  T weight(int q) const { return (q / 2 ? ly : T(1) - ly) * (q % 2 ? lx : T(1) - lx); }
};

// Points of `range`, indexed ((group * K + tap) * range.count + position - range.begin).
template <typename T>
std::vector<SamplePoint<T>> sample_points(const DeformGeometry& g, const PositionRange& range, const T* offset) {
  const int64_t K = g.taps(), n = range.count;
  std::vector<SamplePoint<T>> points(g.deformable_groups * K * n);
  at::parallel_for(0, g.deformable_groups * K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t gk = begin; gk < end; ++gk) {
      for (int64_t i = 0; i < n; ++i) {
        T y, x;
        deform_position(g, offset, gk / K, gk % K, range.begin + i, &y, &x);
        SamplePoint<T>& point = points[gk * n + i];
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
  static constexpr int64_t kBlock = 64;  // positions gathered together by im2col

  // Positions per range: columns of about 4M values (16 MB in float32), reused from range to range, instead of
  // a (C*K, H*W) buffer that is paged in anew on every call.
  static int64_t positions_per_range(const DeformGeometry& g) {
    constexpr int64_t kColumnValues = int64_t(1) << 22;
    return std::max<int64_t>(kBlock, kColumnValues / std::max<int64_t>(1, g.channels * g.taps()) / kBlock * kBlock);
  }

  // im2col reads the image channels-last, (H*W, C): a point's four corners are then four contiguous channel
  // vectors, so one pass over the point data serves all channels and the channel loop vectorises.
  static at::Tensor sampling_layout(const at::Tensor& image) { return image.permute({1, 2, 0}).contiguous(); }

  // columns (C*K, n) of one sample's range from its channels-last image: mask-weighted bilinear samples of
  // every channel at every tap and position. Each block of positions is gathered into a (positions x channels)
  // buffer, then written to the column rows. Each value is the same expression as in a per-channel loop, so the
  // result does not depend on the layout.
  template <typename T>
  static void im2col(const DeformGeometry& g, const PositionRange& range, const T* pixel_data, const T* offset,
                     const T* mask, T* columns) {
    const int64_t K = g.taps(), L = g.positions(), C = g.channels, per_group = g.channels_per_group();
    const int64_t n = range.count;
    const std::vector<SamplePoint<T>> points = sample_points(g, range, offset);
    const std::vector<T> zeros(C, T(0));  // the "corner" of a point outside the image
    // Buffer rows padded by one cache line: with a power-of-two stride the column-order reads below would all
    // fall into a few cache sets.
    const int64_t stride = C + 64 / int64_t(sizeof(T));
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> buffer(kBlock * stride);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kBlock, count = std::min(kBlock, n - first);
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t group = 0; group < g.deformable_groups; ++group) {
            const int64_t point_row = (group * K + k) * n + first, c0 = group * per_group;
            const T* mask_row = mask + (group * K + k) * L + range.begin + first;
            for (int64_t i = 0; i < count; ++i) {
              const SamplePoint<T>& p = points[point_row + i];
              const T m = mask_row[i], w0 = p.weight(0), w1 = p.weight(1), w2 = p.weight(2), w3 = p.weight(3);
              const T* v[4];
              for (int q = 0; q < 4; ++q) v[q] = (p.corner[q] >= 0 ? pixel_data + p.corner[q] * C : zeros.data()) + c0;
              T* out = buffer.data() + i * stride + c0;
              for (int64_t c = 0; c < per_group; ++c) {
                out[c] = m * (w0 * v[0][c] + w1 * v[1][c] + w2 * v[2][c] + w3 * v[3][c]);
              }
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            T* column_row = columns + (c * K + k) * n + first;
            for (int64_t i = 0; i < count; ++i) column_row[i] = buffer[i * stride + c];
          }
        }
      }
    });
  }

  // Scatter of the column gradients (C*K, n) of a range to the input image (transpose of the bilinear
  // sampling), per channel.
  template <typename T>
  static void col2im(const DeformGeometry& g, const PositionRange& range, const T* offset, const T* mask,
                     const T* grad_columns, T* grad_image) {
    const int64_t K = g.taps(), L = g.positions(), n = range.count;
    const std::vector<SamplePoint<T>> points = sample_points(g, range, offset);
    at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        T* plane = grad_image + c * g.height * g.width;
        const int64_t first = c / g.channels_per_group() * K;
        for (int64_t k = 0; k < K; ++k) {
          const SamplePoint<T>* row_points = points.data() + (first + k) * n;
          const T* mask_row = mask + (first + k) * L + range.begin;
          const T* row = grad_columns + (c * K + k) * n;
          for (int64_t i = 0; i < n; ++i) {
            const SamplePoint<T>& p = row_points[i];
            const T value = row[i] * mask_row[i];
            for (int q = 0; q < 4; ++q) {
              if (p.corner[q] >= 0) plane[p.corner[q]] += p.weight(q) * value;
            }
          }
        }
      }
    });
  }

  // Gradients of the offsets and mask of one sample's range: sums over the channels of each deformable group,
  // each task owning a sub-range of output positions.
  template <typename T>
  static void offset_mask_grad(const DeformGeometry& g, const PositionRange& range, const T* image, const T* offset,
                               const T* mask, const T* grad_columns, T* grad_offset, T* grad_mask) {
    const int64_t K = g.taps(), L = g.positions(), per_group = g.channels_per_group(), n = range.count;
    const std::vector<SamplePoint<T>> points = sample_points(g, range, offset);
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      std::vector<T> sum_y(end - begin), sum_x(end - begin), sum_mask(end - begin);
      for (int64_t gk = 0; gk < g.deformable_groups * K; ++gk) {
        const int64_t group = gk / K, k = gk % K;
        const SamplePoint<T>* row_points = points.data() + gk * n;
        std::fill(sum_y.begin(), sum_y.end(), T(0));
        std::fill(sum_x.begin(), sum_x.end(), T(0));
        std::fill(sum_mask.begin(), sum_mask.end(), T(0));
        for (int64_t c = group * per_group; c < (group + 1) * per_group; ++c) {
          const T* plane = image + c * g.height * g.width;
          const T* row = grad_columns + (c * K + k) * n;
          for (int64_t i = begin; i < end; ++i) {
            const SamplePoint<T>& p = row_points[i];
            T v[4];
            corner_values(p, plane, v);
            const T dcol = row[i];
            sum_y[i - begin] += dcol * (p.lx * (v[3] - v[1]) + (T(1) - p.lx) * (v[2] - v[0]));
            sum_x[i - begin] += dcol * (p.ly * (v[3] - v[2]) + (T(1) - p.ly) * (v[1] - v[0]));
            sum_mask[i - begin] +=
                dcol * (p.weight(0) * v[0] + p.weight(1) * v[1] + p.weight(2) * v[2] + p.weight(3) * v[3]);
          }
        }
        const int64_t offset_row = (group * 2 * K + 2 * k) * L + range.begin;
        for (int64_t i = begin; i < end; ++i) {
          const T m = mask[gk * L + range.begin + i];
          grad_offset[offset_row + i] = m * sum_y[i - begin];
          grad_offset[offset_row + L + i] = m * sum_x[i - begin];
          grad_mask[gk * L + range.begin + i] = sum_mask[i - begin];
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
