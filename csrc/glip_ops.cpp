// Schemas of the glip:: custom ops. The CPU kernels register in cpu/, the CUDA kernels in cuda/; autograd and
// fake (meta) implementations are registered from Python (maskrcnn_benchmark/layers/compiled_registration.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(glip, m) {
  m.def("ml_nms(Tensor boxes, Tensor scores, Tensor labels, float iou_threshold) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor");
  // Returns the element-wise loss and, when compute_grad, d loss / d logits from the same pass (else empty).
  m.def(
      "token_sigmoid_focal_loss(Tensor logits, Tensor targets, float alpha, float gamma, bool compute_grad) "
      "-> (Tensor, Tensor)");
  m.def(
      "modulated_deform_conv(Tensor input, Tensor offset, Tensor mask, Tensor weight, Tensor? bias, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "int deformable_groups) -> Tensor");
  m.def(
      "modulated_deform_conv_backward(Tensor grad, Tensor input, Tensor offset, Tensor mask, Tensor weight, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "int deformable_groups) -> (Tensor, Tensor, Tensor, Tensor)");
}

// `import maskrcnn_benchmark._C` loads this library, which runs the registrations; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "GLIP custom ops, exposed as torch.ops.glip", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
