//! Key/value cache for incremental decoding.
//!
//! Each attention layer appends the keys and values of the new tokens along the sequence axis, so
//! a decoding step only computes the projections of the one new token. Keys are cached after
//! RoPE, and before the grouped-query head repetition (so a GQA model caches
//! `num_key_value_heads`, not `num_attention_heads`).

use burn::tensor::Tensor;

/// The cached keys and values of one attention layer. // [batch, kv_heads, cached, head_dim]
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Keys, `[batch, kv_heads, cached, head_dim]`.
    pub keys: Tensor<4>,
    /// Values, `[batch, kv_heads, cached, head_dim]`.
    pub values: Tensor<4>,
}

/// A KV cache for all layers of one model and one batch.
///
/// Create it empty with [`KvCache::new`], pass it to
/// [`CausalLm::forward_with`](crate::CausalLm::forward_with) for the prompt, then for every new
/// token. The attention mask given at each step must cover the cached tokens plus the new ones
/// (`[batch, cached + new]`), as in `transformers`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` attention layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Number of cached positions (0 when empty).
    pub fn seq_len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|l| l.keys.dims()[2]).unwrap_or(0)
    }

    /// Number of layers this cache was made for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Drops all cached positions.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// The cache of layer `index`, if anything is cached.
    pub fn layer(&self, index: usize) -> Option<&LayerCache> {
        self.layers.get(index).and_then(|l| l.as_ref())
    }

    /// Appends new keys and values to layer `index` and returns the full keys and values.
    /// // [b, kv, new, d] -> [b, kv, cached + new, d]
    ///
    /// # Panics
    /// When `index` is out of range (the cache was made for a different model).
    pub fn append(
        &mut self,
        index: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let n = self.layers.len();
        let slot = self
            .layers
            .get_mut(index)
            .unwrap_or_else(|| panic!("KvCache has {n} layers, asked for layer {index}"));
        let (keys, values) = match slot.take() {
            Some(old) => {
                (Tensor::cat(vec![old.keys, keys], 2), Tensor::cat(vec![old.values, values], 2))
            }
            None => (keys, values),
        };
        *slot = Some(LayerCache { keys: keys.clone(), values: values.clone() });
        (keys, values)
    }
}
