//! CEL when proxy-core is built without its `cel` feature: the same names as
//! the CEL module, but no expression can be compiled. A configuration with a
//! claim mapping or validation rule written as an expression is refused at
//! load, naming the field and the missing feature; issuers configured with
//! claims alone work as with the feature.
//!
//! [`Expression`] has no values, so every path that would evaluate one is
//! shown dead by the compiler rather than assumed so.

use serde_json::{Map, Value as Json};

use crate::authn::UserInfo;

/// Why an expression is refused in this build.
pub const NOT_BUILT: &str =
    "CEL expressions need proxy-core's `cel` feature, which this build was made without";

/// The variable an expression would see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// `claims`: claim mappings and `claimValidationRules`.
    Claims,
    /// `user`: `userValidationRules`.
    User,
}

/// A compiled expression: none exist in this build.
#[derive(Debug, Clone)]
pub enum Expression {}

/// A CEL value: only the absent one exists in this build.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
}

/// Refuses every expression (see [`NOT_BUILT`]).
pub fn compile(_source: &str, _variable: Variable) -> Result<Expression, String> {
    Err(NOT_BUILT.to_owned())
}

impl Expression {
    /// The expression as written.
    pub fn source(&self) -> &str {
        match *self {}
    }

    /// Whether it reads `claims.<field>`.
    pub fn reads_claim(&self, _field: &str) -> bool {
        match *self {}
    }

    /// Evaluates it.
    pub fn evaluate(&self, _value: &Value) -> Result<Value, String> {
        match *self {}
    }

    /// Whether `result` is a list straight from `split()`.
    pub fn is_split_list(&self, _result: &Value, _value: &Value) -> bool {
        match *self {}
    }
}

/// The claims as an expression would see them: nothing to see here.
pub fn claims_to_cel(_claims: &Map<String, Json>) -> Value {
    Value::Null
}

/// The user as a rule would see it: nothing to see here.
pub fn user_to_cel(_user: &UserInfo) -> Value {
    Value::Null
}

/// A result read as a string: no result exists.
pub fn to_string(_value: Value) -> Result<String, &'static str> {
    Err(NOT_BUILT)
}

/// A result read as a list of strings: no result exists.
pub fn to_string_list(_value: Value) -> Result<Vec<String>, &'static str> {
    Err(NOT_BUILT)
}

/// A result read as a boolean: no result exists.
pub fn to_bool(_value: Value) -> Result<bool, &'static str> {
    Err(NOT_BUILT)
}
