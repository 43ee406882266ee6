// ROIAlign forward and backward with torchvision's semantics (aligned flag), on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "../glip_math.h"
#include "../glip_ops.h"

namespace glip {
namespace {

struct RoiParams {
  double spatial_scale;
  int64_t pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// Bilinear samples of every bin of one ROI, bin-major (grid_h * grid_w per bin); computed once, used for all
// channels.
template <typename T>
std::vector<RoiSample<T>> roi_samples(const RoiBox<T>& box, int64_t height, int64_t width, const RoiParams& p) {
  std::vector<RoiSample<T>> samples;
  samples.reserve(p.pooled_h * p.pooled_w * box.grid_h * box.grid_w);
  for (int64_t ph = 0; ph < p.pooled_h; ++ph) {
    for (int64_t pw = 0; pw < p.pooled_w; ++pw) {
      for (int64_t iy = 0; iy < box.grid_h; ++iy) {
        const T y = roi_sample_y(box, ph, iy);
        for (int64_t ix = 0; ix < box.grid_w; ++ix) {
          samples.push_back(roi_sample(height, width, y, roi_sample_x(box, pw, ix)));
        }
      }
    }
  }
  return samples;
}

template <typename T>
RoiBox<T> make_box(const T* rois, int64_t n, const RoiParams& p) {
  return roi_box(rois + 5 * n, T(p.spatial_scale), p.pooled_h, p.pooled_w, p.sampling_ratio, p.aligned);
}

template <typename T>
void roi_align_forward_impl(const at::Tensor& input, const at::Tensor& rois, const RoiParams& p, at::Tensor& out) {
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t bins = p.pooled_h * p.pooled_w;
  const T* in = input.const_data_ptr<T>();
  const T* roi = rois.const_data_ptr<T>();
  T* result = out.mutable_data_ptr<T>();
  at::parallel_for(0, rois.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const RoiBox<T> box = make_box(roi, n, p);
      const std::vector<RoiSample<T>> samples = roi_samples(box, height, width, p);
      const int64_t per_bin = box.grid_h * box.grid_w;
      const T count = T(per_bin > 1 ? per_bin : 1);
      for (int64_t c = 0; c < channels; ++c) {
        const T* plane = in + (box.batch_index * channels + c) * height * width;
        T* dst = result + (n * channels + c) * bins;
        for (int64_t bin = 0; bin < bins; ++bin) {
          T sum = T(0);
          for (int64_t k = bin * per_bin; k < (bin + 1) * per_bin; ++k) {
            const RoiSample<T>& s = samples[k];
            if (!s.valid) continue;
            sum += s.w1 * plane[s.y_low * width + s.x_low] + s.w2 * plane[s.y_low * width + s.x_high] +
                   s.w3 * plane[s.y_high * width + s.x_low] + s.w4 * plane[s.y_high * width + s.x_high];
          }
          dst[bin] = sum / count;
        }
      }
    }
  });
}

// Channels are independent planes, so parallelising over them needs no atomics.
template <typename T>
void roi_align_backward_impl(const at::Tensor& grad, const at::Tensor& rois, const RoiParams& p,
                             at::Tensor& grad_input) {
  const int64_t channels = grad_input.size(1), height = grad_input.size(2), width = grad_input.size(3);
  const int64_t bins = p.pooled_h * p.pooled_w, num_rois = rois.size(0);
  const T* dy = grad.const_data_ptr<T>();
  const T* roi = rois.const_data_ptr<T>();
  T* gin = grad_input.mutable_data_ptr<T>();
  std::vector<RoiBox<T>> boxes(num_rois);
  std::vector<std::vector<RoiSample<T>>> samples(num_rois);
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      boxes[n] = make_box(roi, n, p);
      samples[n] = roi_samples(boxes[n], height, width, p);
    }
  });
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < num_rois; ++n) {
        const int64_t per_bin = boxes[n].grid_h * boxes[n].grid_w;
        const T count = T(per_bin);
        T* plane = gin + (boxes[n].batch_index * channels + c) * height * width;
        const T* src = dy + (n * channels + c) * bins;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const T grad_bin = src[bin];
          for (int64_t k = bin * per_bin; k < (bin + 1) * per_bin; ++k) {
            const RoiSample<T>& s = samples[n][k];
            if (!s.valid) continue;
            plane[s.y_low * width + s.x_low] += grad_bin * s.w1 / count;
            plane[s.y_low * width + s.x_high] += grad_bin * s.w2 / count;
            plane[s.y_high * width + s.x_low] += grad_bin * s.w3 / count;
            plane[s.y_high * width + s.x_high] += grad_bin * s.w4 / count;
          }
        }
      }
    }
  });
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                         int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be (N, C, H, W)");
  check_roi_args(input, rois);
  at::Tensor out = at::zeros({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous();
  const RoiParams p{spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "roi_align_cpu",
                             [&] { roi_align_forward_impl<scalar_t>(input_c, rois_c, p, out); });
  return out;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_args(grad, rois);
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) return grad_input;
  const at::Tensor grad_c = grad.contiguous(), rois_c = rois.contiguous();
  const RoiParams p{spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "roi_align_backward_cpu",
                             [&] { roi_align_backward_impl<scalar_t>(grad_c, rois_c, p, grad_input); });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace glip
