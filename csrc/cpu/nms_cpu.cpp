// Class-aware greedy NMS with the official ml_nms semantics, on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../glip_math.h"
#include "../glip_ops.h"

namespace glip {
namespace {

// Greedy suppression over `order` (indices by decreasing score). Boxes of different labels have IoU 0, so with
// a threshold >= 0 each label is processed on its own (a stable regrouping keeps the score order inside each
// label); with a negative threshold every other box is suppressed by the first.
template <typename scalar_t>
std::vector<uint8_t> greedy_keep(const at::Tensor& boxes, const at::Tensor& order, const at::Tensor& labels,
                                 scalar_t threshold) {
  const int64_t n = boxes.size(0);
  const scalar_t* box = boxes.const_data_ptr<scalar_t>();
  const int64_t* label = labels.const_data_ptr<int64_t>();
  std::vector<int64_t> visit(order.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>() + n);
  std::vector<uint8_t> kept(n, 0);
  if (threshold < scalar_t(0)) {
    kept[visit[0]] = 1;
    return kept;
  }
  std::stable_sort(visit.begin(), visit.end(), [&](int64_t a, int64_t b) { return label[a] < label[b]; });
  std::vector<uint8_t> suppressed(n, 0);
  for (int64_t start = 0, stop = 0; start < n; start = stop) {
    while (stop < n && label[visit[stop]] == label[visit[start]]) ++stop;
    for (int64_t a = start; a < stop; ++a) {
      const int64_t i = visit[a];
      if (suppressed[i]) continue;
      kept[i] = 1;
      for (int64_t b = a + 1; b < stop; ++b) {
        const int64_t j = visit[b];
        if (!suppressed[j] && legacy_iou(box + 4 * i, box + 4 * j) > threshold) suppressed[j] = 1;
      }
    }
  }
  return kept;
}

// Kept indices sorted ascending. Boxes are visited by decreasing score (stable: ties visit the lower index
// first); a box is suppressed by a kept box of the same label when their +1 IoU exceeds the threshold.
at::Tensor ml_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                      double iou_threshold) {
  check_nms_args(boxes, scores, labels);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const at::Tensor boxes_c = boxes.contiguous();
  const at::Tensor labels_c = labels.contiguous();
  std::vector<uint8_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "ml_nms_cpu", [&] {
    kept = greedy_keep<scalar_t>(boxes_c, order, labels_c, static_cast<scalar_t>(iou_threshold));
  });
  int64_t count = 0;
  for (uint8_t k : kept) count += k;
  at::Tensor keep = at::empty({count}, boxes.options().dtype(at::kLong));
  int64_t* out = keep.mutable_data_ptr<int64_t>();
  for (int64_t i = 0, k = 0; i < n; ++i) {
    if (kept[i]) out[k++] = i;
  }
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(glip, CPU, m) { m.impl("ml_nms", &ml_nms_cpu); }

}  // namespace glip
