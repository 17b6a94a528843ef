//! Every dense loss, built by name from JSON, on `[batch, seq, vocab]` logits with padded
//! positions (label `-100`): finite loss, finite gradient, and exactly zero gradient on padding.

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_losses::{KdBatch, LOSS_NAMES, LossConfig, Reduction};

#[test]
fn every_dense_loss_by_name_on_padded_sequences() {
    let device = Device::flex().autodiff();
    let (batch, seq, vocab) = (2, 5, 11);
    let n = batch * seq * vocab;
    let s: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 17.0) - 3.0).collect();
    let t: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 / 13.0) - 3.5).collect();
    // Second sequence is left-padded by two positions.
    let labels: Vec<i64> = (0..batch * seq)
        .map(|i| if i >= seq && i < seq + 2 { -100 } else { (i * 3 % vocab) as i64 })
        .collect();
    let mut ran = 0;
    for name in LOSS_NAMES {
        let Ok(config) = serde_json::from_value::<LossConfig>(serde_json::json!({ "loss": name }))
        else {
            continue; // delta_kd, topk_kl, minillm and scaling_law take other inputs
        };
        let loss = config.init().unwrap();
        let student =
            Tensor::<3>::from_data(TensorData::new(s.clone(), [batch, seq, vocab]), &device)
                .require_grad();
        let teacher =
            Tensor::<3>::from_data(TensorData::new(t.clone(), [batch, seq, vocab]), &device);
        let labels_t =
            Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [batch * seq]), &device);
        let out = loss
            .forward(
                KdBatch::from_sequences(student.clone(), teacher).with_labels(labels_t),
                Reduction::Mean,
            )
            .unwrap();
        let value = out.loss.clone().into_scalar::<f32>();
        assert!(value.is_finite(), "{name}: {value}");
        let grads = out.loss.backward();
        let g = student
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{name}");
        for pos in seq..seq + 2 {
            let row = &g[pos * vocab..(pos + 1) * vocab];
            assert!(row.iter().all(|x| *x == 0.0), "{name}: padded position {pos} has gradient");
        }
        ran += 1;
    }
    assert_eq!(ran, 16, "every dense loss must build from its name");
}
