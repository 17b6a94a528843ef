//! Host views of flex tensors for the fused CPU kernels (`fused_act`, `fused_norm`): a tensor's
//! contiguous `f32` values, and a new tensor from a vector.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorData};

/// The flex tensor's contiguous `f32` values (copied only when strided).
pub(crate) fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous().as_slice::<f32>().expect("f32 contiguous").to_vec(),
        ),
    }
}

/// A new contiguous flex tensor of `shape`.
pub(crate) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
