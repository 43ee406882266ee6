// Fused token sigmoid focal loss on the CPU: one pass gives the loss and, for autograd, its derivative.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "../glip_math.h"
#include "../glip_ops.h"

namespace glip {
namespace {

constexpr int64_t kGrain = 16384;

template <bool kWithGrad, typename T>
void focal_loss_loop(int64_t total, const T* x, const T* t, T alpha, T gamma, T* loss, T* grad) {
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    T unused;
    for (int64_t i = begin; i < end; ++i) {
      loss[i] = token_focal_loss<kWithGrad>(x[i], t[i], alpha, gamma, kWithGrad ? grad + i : &unused);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> focal_loss_cpu(const at::Tensor& logits, const at::Tensor& targets, double alpha,
                                                  double gamma, bool compute_grad) {
  check_focal_loss_args(logits, targets);
  const at::Tensor x = logits.contiguous(), t = targets.contiguous();
  at::Tensor loss = at::empty_like(x);
  at::Tensor grad = compute_grad ? at::empty_like(x) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "token_sigmoid_focal_loss_cpu", [&] {
    const scalar_t a = static_cast<scalar_t>(alpha), g = static_cast<scalar_t>(gamma);
    if (compute_grad) {
      focal_loss_loop<true>(x.numel(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), a, g,
                            loss.mutable_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>());
    } else {
      focal_loss_loop<false, scalar_t>(x.numel(), x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(), a, g,
                                       loss.mutable_data_ptr<scalar_t>(), nullptr);
    }
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CPU, m) { m.impl("token_sigmoid_focal_loss", &focal_loss_cpu); }

}  // namespace glip
