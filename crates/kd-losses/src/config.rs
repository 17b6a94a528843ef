//! The config boilerplate every loss shares, as one macro: [`loss_config!`].

/// Declares a loss config: the struct with its field docs, serde's behaviour (a missing key
/// takes the field's default; an unknown key is an error), `Default` from the listed defaults,
/// `new()` (when a `new:` doc is given) and a `with_<field>` setter for each field that names
/// one. Validation stays hand-written, in the config's `init`.
///
/// ```text
/// loss_config! {
///     /// Config of [`ForwardKl`].
///     pub struct ForwardKlConfig, new: "Defaults: `T = 1`, no `T²` scaling." {
///         /// Softmax temperature `T > 0` for both sides (default `1`).
///         temperature: f64 = 1.0 => with_temperature,
///         /// Multiply by `T²` (default `false`).
///         scale_by_t2: bool = false => with_scale_by_t2,
///     }
/// }
/// ```
macro_rules! loss_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident $(, new: $new_doc:literal)? {
            $(
                $(#[$field_meta:meta])*
                $field:ident : $ty:ty = $default:expr $(=> $setter:ident)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        $(
            impl $name {
                #[doc = $new_doc]
                pub fn new() -> Self {
                    Self::default()
                }
            }
        )?

        impl $name {
            $($(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                pub fn $setter(mut self, $field: $ty) -> Self {
                    self.$field = $field;
                    self
                }
            )?)*
        }
    };
}

pub(crate) use loss_config;
