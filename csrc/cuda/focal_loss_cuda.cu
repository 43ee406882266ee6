// Fused token sigmoid focal loss on CUDA: one pass gives the loss and, for autograd, its derivative. Half and
// bfloat16 compute in float.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "../glip_math.h"
#include "../glip_ops.h"
#include "cuda_utils.cuh"

namespace glip {
namespace {

template <bool kWithGrad, typename scalar_t, typename acc_t>
__global__ void focal_loss_kernel(int64_t total, const scalar_t* logits, const scalar_t* targets, acc_t alpha,
                                  acc_t gamma, scalar_t* loss, scalar_t* grad) {
  GLIP_CUDA_LOOP(i, total) {
    acc_t d;
    const acc_t value =
        token_focal_loss<kWithGrad>(static_cast<acc_t>(logits[i]), static_cast<acc_t>(targets[i]), alpha, gamma, &d);
    loss[i] = static_cast<scalar_t>(value);
    if (kWithGrad) grad[i] = static_cast<scalar_t>(d);
  }
}

std::tuple<at::Tensor, at::Tensor> focal_loss_cuda(const at::Tensor& logits, const at::Tensor& targets, double alpha,
                                                   double gamma, bool compute_grad) {
  check_focal_loss_args(logits, targets);
  c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.contiguous(), t = targets.contiguous();
  at::Tensor loss = at::empty_like(x);
  at::Tensor grad = compute_grad ? at::empty_like(x) : at::empty({0}, x.options());
  const int64_t total = x.numel();
  if (total == 0) return {loss, grad};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "token_sigmoid_focal_loss_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const acc_t a = static_cast<acc_t>(alpha), g = static_cast<acc_t>(gamma);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    if (compute_grad) {
      focal_loss_kernel<true, scalar_t, acc_t><<<blocks_for(total), kThreads, 0, current_stream()>>>(
          total, xp, tp, a, g, loss.mutable_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>());
    } else {
      focal_loss_kernel<false, scalar_t, acc_t><<<blocks_for(total), kThreads, 0, current_stream()>>>(
          total, xp, tp, a, g, loss.mutable_data_ptr<scalar_t>(), nullptr);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CUDA, m) { m.impl("token_sigmoid_focal_loss", &focal_loss_cuda); }

}  // namespace glip
