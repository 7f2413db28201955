//! The field names a serialisable struct sets, without serialising their values: the
//! allow-list checks (volume types, pod-spec fields) read every pod on every reconcile, and a
//! full JSON serialisation of a pod spec costs several times the rest of its translation.

use serde::Serialize;
use serde::ser::{self, Impossible};

/// The names of the fields `value` serialises (k8s-openapi structs skip unset optional
/// fields); empty for anything that is not a struct or map of string keys.
pub fn names<T: Serialize + ?Sized>(value: &T) -> Vec<String> {
    value.serialize(Names).unwrap_or_default()
}

#[derive(Debug)]
pub struct NotAStruct;

impl std::fmt::Display for NotAStruct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a struct")
    }
}

impl std::error::Error for NotAStruct {}

impl ser::Error for NotAStruct {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotAStruct
    }
}

struct Names;

/// Collects field names; values are never visited.
pub struct Fields(Vec<String>);

impl ser::SerializeStruct for Fields {
    type Ok = Vec<String>;
    type Error = NotAStruct;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        _: &T,
    ) -> Result<(), NotAStruct> {
        self.0.push(key.to_string());
        Ok(())
    }
    fn end(self) -> Result<Vec<String>, NotAStruct> {
        Ok(self.0)
    }
}

impl ser::SerializeMap for Fields {
    type Ok = Vec<String>;
    type Error = NotAStruct;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotAStruct> {
        match serde_json::to_value(key) {
            Ok(serde_json::Value::String(k)) => {
                self.0.push(k);
                Ok(())
            }
            _ => Err(NotAStruct),
        }
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, _: &T) -> Result<(), NotAStruct> {
        Ok(())
    }
    fn end(self) -> Result<Vec<String>, NotAStruct> {
        Ok(self.0)
    }
}

macro_rules! not_a_struct {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<Vec<String>, NotAStruct> { Err(NotAStruct) })*
    };
}

impl ser::Serializer for Names {
    type Ok = Vec<String>;
    type Error = NotAStruct;
    type SerializeSeq = Impossible<Vec<String>, NotAStruct>;
    type SerializeTuple = Impossible<Vec<String>, NotAStruct>;
    type SerializeTupleStruct = Impossible<Vec<String>, NotAStruct>;
    type SerializeTupleVariant = Impossible<Vec<String>, NotAStruct>;
    type SerializeMap = Fields;
    type SerializeStruct = Fields;
    type SerializeStructVariant = Impossible<Vec<String>, NotAStruct>;

    not_a_struct!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<String>, NotAStruct> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Vec<String>, NotAStruct> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<String>, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotAStruct> {
        Err(NotAStruct)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Fields, NotAStruct> {
        Ok(Fields(Vec::new()))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields, NotAStruct> {
        Ok(Fields(Vec::new()))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotAStruct> {
        Err(NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, Volume};

    #[test]
    fn names_are_the_set_fields_as_json_names_them() {
        let v = Volume {
            name: "v".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        };
        assert_eq!(super::names(&v), ["emptyDir", "name"]);
        assert_eq!(
            super::names(&v),
            serde_json::to_value(&v)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(super::names(&PodSpec::default()), ["containers"]);
        assert_eq!(
            super::names(&serde_json::json!({"a": 1, "b": {}})),
            ["a", "b"]
        );
        assert!(super::names(&5).is_empty());
        assert!(super::names(&serde_json::json!(null)).is_empty());
    }
}
