//! Typed, borrowed JSON reading shared by the parsers (a JSON "slot"
//! framework).
//!
//! A parser declares, with `json_fields!`, a struct per JSON object it
//! looks into, with one slot per key it reads; every other key is validated
//! and skipped. Strings borrow from the line unless they contain escapes.
//! The slots keep what `serde_json::Value` lookups could observe: absent vs
//! `null` vs a value, the last of duplicate keys, whether a number is a
//! `u64`, and the type of a value that is not looked into. Every value goes
//! through `deserialize_any`, so the JSON accepted and the errors given are
//! those of `serde_json::from_str::<Value>` (nesting limit, numbers out of
//! range, bad escapes).

use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ParseError;
use super::normalize::strip_cri_prefix;

/// One JSON value as the parsers see it; arrays and objects in a
/// [`Lit`] slot are validated and skipped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lit<'a> {
    Null,
    Bool(bool),
    /// A non-negative integer that fits a `u64` (`Value::as_u64`).
    U64(u64),
    /// Any other number: negative, fractional or beyond `u64`.
    OtherNumber,
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Lit<'_> {
    /// The string, if this is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Lit::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer from a JSON number or a decimal string
    /// (protojson encodes 64-bit integers as strings; Falco sometimes does
    /// too).
    pub(crate) fn lenient_u64(&self) -> Option<u64> {
        match self {
            Lit::U64(n) => Some(*n),
            Lit::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean from `true`/`false` or the strings `"true"`/`"false"`.
    pub(crate) fn lenient_bool(&self) -> Option<bool> {
        match self {
            Lit::Bool(b) => Some(*b),
            Lit::Str(s) => match s.trim() {
                "true" | "TRUE" | "True" | "1" => Some(true),
                "false" | "FALSE" | "False" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A TCP/UDP port (0..=65535) from a number or a decimal string.
    pub(crate) fn port(&self) -> Option<u16> {
        self.lenient_u64().and_then(|p| u16::try_from(p).ok())
    }
}

/// Whether a slot holds JSON `null`.
pub(crate) trait JsonNull {
    fn is_null(&self) -> bool;
}

impl JsonNull for Lit<'_> {
    fn is_null(&self) -> bool {
        matches!(self, Lit::Null)
    }
}

impl<T> JsonNull for Nested<T> {
    fn is_null(&self) -> bool {
        matches!(self, Nested::Null)
    }
}

impl<T> JsonNull for Array<T> {
    fn is_null(&self) -> bool {
        matches!(self, Array::Null)
    }
}

/// A slot's value unless it is absent or `null`.
pub(crate) fn get<T: JsonNull>(slot: &Option<T>) -> Option<&T> {
    slot.as_ref().filter(|v| !v.is_null())
}

/// A `snake_case` slot's value, else its `camelCase` twin's (`null` counts
/// as absent, and a present snake_case key hides the camelCase one, even
/// when it is `null`).
pub(crate) fn pick<'s, T: JsonNull>(snake: &'s Option<T>, camel: &'s Option<T>) -> Option<&'s T> {
    match snake {
        Some(v) => (!v.is_null()).then_some(v),
        None => get(camel),
    }
}

/// A string slot (`null` or another type = `None`).
pub(crate) fn str_of<'s>(slot: &'s Option<Lit<'_>>) -> Option<&'s str> {
    slot.as_ref().and_then(Lit::as_str)
}

impl<'de> Deserialize<'de> for Lit<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lit<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Lit<'de>, E> {
                Ok(Lit::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Lit<'de>, E> {
                Ok(Lit::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Lit<'de>, E> {
                Ok(Lit::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Lit<'de>, E> {
                Ok(u64::try_from(n).map_or(Lit::OtherNumber, Lit::U64))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lit<'de>, E> {
                Ok(Lit::OtherNumber)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Lit<'de>, E> {
                Ok(Lit::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lit<'de>, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Lit::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lit<'de>, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Lit::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, validated exactly as `serde_json::Value` would be
/// (through `deserialize_any`, so nesting depth and number range are
/// checked) and dropped.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// An object key, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The slots of one JSON object (declared with `json_fields!`).
pub(crate) trait Fields<'de>: Default {
    /// Reads the value of `key` into its slot (the last duplicate wins), or
    /// validates and skips it.
    fn read_field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// A slot whose value is looked into if it is an object.
#[derive(Debug)]
pub(crate) enum Nested<T> {
    Null,
    Object(T),
    /// Neither `null` nor an object.
    Other,
}

impl<T> Nested<T> {
    /// The object's slots, if this is an object.
    pub(crate) fn object(&self) -> Option<&T> {
        match self {
            Nested::Object(t) => Some(t),
            _ => None,
        }
    }
}

/// A value type of a `json_fields!` slot: read into the slot in place (the
/// slot structs are large; this avoids copying them through return values).
pub(crate) trait Slot<'de>: Sized {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error>;
}

impl<'de> Slot<'de> for Lit<'de> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        *slot = Some(Lit::deserialize(d)?);
        Ok(())
    }
}

impl<'de> Slot<'de> for Skip {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        *slot = Some(Skip::deserialize(d)?);
        Ok(())
    }
}

/// Reads one value into a slot (a [`serde::de::DeserializeSeed`]).
pub(crate) struct SlotSeed<'s, T>(pub(crate) &'s mut Option<T>);

impl<'de, T: Slot<'de>> serde::de::DeserializeSeed<'de> for SlotSeed<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        T::read(self.0, d)
    }
}

/// The scalar `visit_*` methods of a container slot's visitor: a boolean,
/// number or string where an object or array was looked for is `$other`.
macro_rules! scalar_is_other {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            *self.0 = Some($other);
            Ok(())
        }
    };
}

struct NestedVisitor<'s, T>(&'s mut Option<Nested<T>>);

impl<'de, T: Fields<'de>> Visitor<'de> for NestedVisitor<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        *self.0 = Some(Nested::Null);
        Ok(())
    }
    scalar_is_other!(Nested::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        *self.0 = Some(Nested::Other);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A duplicate key's later object replaces the earlier one whole.
        *self.0 = Some(Nested::Object(T::default()));
        let Some(Nested::Object(t)) = self.0 else {
            return Ok(());
        };
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            t.read_field(&k, &mut map)?;
        }
        Ok(())
    }
}

impl<'de, T: Fields<'de>> Slot<'de> for Nested<T> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        d.deserialize_any(NestedVisitor(slot))
    }
}

/// A slot whose value is looked into if it is an array (of `T`).
#[derive(Debug)]
pub(crate) enum Array<T> {
    Null,
    /// The elements, each read in place (so each is `Some`); the first is
    /// kept inline, so a one-element array allocates nothing.
    Items {
        first: Option<T>,
        rest: Vec<Option<T>>,
    },
    /// Neither `null` nor an array.
    Other,
}

impl<T> Array<T> {
    /// The elements (none unless this is an array).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let (first, rest) = match self {
            Array::Items { first, rest } => (first.as_ref(), &rest[..]),
            _ => (None, &[][..]),
        };
        first.into_iter().chain(rest.iter().flatten())
    }
}

impl<'de, T: Slot<'de>> Slot<'de> for Array<T> {
    fn read<D: Deserializer<'de>>(slot: &mut Option<Self>, d: D) -> Result<(), D::Error> {
        struct V<'s, T>(&'s mut Option<Array<T>>);
        impl<'de, T: Slot<'de>> Visitor<'de> for V<'_, T> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<(), E> {
                *self.0 = Some(Array::Null);
                Ok(())
            }
            scalar_is_other!(Array::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                *self.0 = Some(Array::Items {
                    first: None,
                    rest: Vec::new(),
                });
                let Some(Array::Items { first, rest }) = self.0 else {
                    return Ok(());
                };
                if seq.next_element_seed(SlotSeed(first))?.is_none() {
                    return Ok(());
                }
                // Each further element is read in place at the end.
                loop {
                    rest.push(None);
                    let last = rest.len() - 1;
                    if seq.next_element_seed(SlotSeed(&mut rest[last]))?.is_none() {
                        rest.pop();
                        return Ok(());
                    }
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                *self.0 = Some(Array::Other);
                Ok(())
            }
        }
        d.deserialize_any(V(slot))
    }
}

/// Declares the slots of one JSON object: `field: Type = "key"`, each an
/// `Option<Type>` (`None` = key absent); other keys are skipped.
macro_rules! json_fields {
    (
        $(#[$meta:meta])*
        struct $name:ident<$lt:lifetime> {
            $( $field:ident : $ty:ty = $key:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        struct $name<$lt> {
            $( $field: Option<$ty>, )*
        }

        impl<$lt> $crate::telemetry::events::json::Fields<$lt> for $name<$lt> {
            fn read_field<A: serde::de::MapAccess<$lt>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                match key {
                    $( $key => map.next_value_seed($crate::telemetry::events::json::SlotSeed(&mut self.$field))?, )*
                    _ => {
                        map.next_value::<$crate::telemetry::events::json::Skip>()?;
                    }
                }
                Ok(())
            }
        }
    };
}
pub(crate) use json_fields;

/// Parses a JSON line into the slots of its top-level object (the shared
/// first step of the parsers): strips a CRI prefix, a trailing comma
/// (Falco stats files), whitespace.
pub(crate) fn parse_top<'a, 's, T: Fields<'a>>(
    line: &'a str,
    slot: &'s mut Option<Nested<T>>,
) -> Result<&'s T, ParseError> {
    let line = strip_cri_prefix(line)?.trim();
    let line = line.strip_suffix(',').unwrap_or(line).trim_end();
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    // `serde_json::from_str`, reading into `slot` in place.
    let mut de = serde_json::Deserializer::from_str(line);
    let res =
        serde::de::DeserializeSeed::deserialize(SlotSeed(slot), &mut de).and_then(|()| de.end());
    match (res, slot) {
        (Err(e), _) => Err(ParseError::InvalidJson(e.to_string())),
        (Ok(()), Some(Nested::Object(t))) => Ok(t),
        (Ok(()), _) => Err(ParseError::NotAnObject),
    }
}

/// An IP address, accepting the bracketed IPv6 form (`[::1]`).
pub(crate) fn ip(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}
