//! CEL expressions of kube's `AuthenticationConfiguration`, compiled once at
//! load and evaluated per token with the `cel` crate.
//!
//! Claim expressions see `claims`, the token's claims as kube decodes them
//! (every JSON number is a `double`); user validation rules see `user` with
//! `username`, `uid`, `groups` and `extra`. Field names written with kube's
//! escapes (`claims.kubernetes__dot__io`) read the unescaped key, as in kube.
//!
//! The `cel` crate has no type checker, so what kube refuses at load by
//! checking types is checked here by walking the parsed expression: every
//! function must be one this module vouches for (same meaning as in kube),
//! and every name must be the expression's variable or a macro's loop
//! variable. Anything else is refused at load with the reason; nothing is
//! ever skipped. Result types are checked at evaluation, where a wrong type
//! refuses the token.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::CelString;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env};

/// A CEL value (the `cel` crate's).
pub use cel::Value;
use serde_json::{Map, Value as Json};

use super::cel_kube;
use crate::authn::UserInfo;

/// The variable an expression sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// `claims`: claim mappings and `claimValidationRules`.
    Claims,
    /// `user`: `userValidationRules`.
    User,
}

impl Variable {
    fn name(self) -> &'static str {
        match self {
            Variable::Claims => "claims",
            Variable::User => "user",
        }
    }
}

/// A compiled expression.
#[derive(Clone)]
pub struct Expression {
    source: Arc<str>,
    expr: Arc<IdedExpr>,
    variable: Variable,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// Operators and functions whose meaning in the `cel` crate is the one they
/// have in kube's CEL environment. Macros (`has`, `all`, `exists`,
/// `exists_one`, `map`, `filter`) expand into these.
pub const SUPPORTED_FUNCTIONS: &[&str] = &[
    // operators
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "_-_",
    "_+_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "-_",
    "_[_]",
    "_[?_]",
    "_?._",
    "@in",
    "@not_strictly_false",
    // standard library
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bool",
    // optional values
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "orValue",
    "or",
    // kube's strings extension (version 2)
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
];

fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // The strings extension registers its overloads on a fresh stdlib
        // environment, where none of its names are taken. Were one ever
        // refused, calls of it would fail at evaluation (refusing the token,
        // never passing it), and the table tests of this module would fail.
        let _ = env.add_extension(cel::extensions::strings);
        // Likewise: were it refused, optional selections would fail at
        // evaluation, and the table tests would fail.
        let _ = cel_kube::register(&mut env);
        Arc::new(env)
    })
}

/// Compiles `source` for `variable`. The error says what is wrong, without
/// the field path (the caller adds it).
pub fn compile(source: &str, variable: Variable) -> Result<Expression, String> {
    if source.trim().is_empty() {
        return Err("is empty".into());
    }
    let mut expr = env()
        .parser()
        .parse(source)
        .map_err(|e| format!("compilation failed: {}", one_line(&e.to_string())))?;
    let mut bound = Vec::new();
    check(&mut expr, variable.name(), &mut bound)?;
    Ok(Expression {
        source: source.into(),
        expr: Arc::new(expr),
        variable,
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks names and functions, rewrites kube's escaped field names, and
/// compiles the forms the `cel` crate reads otherwise into kube's (see `cel_kube`).
fn check(expr: &mut IdedExpr, variable: &str, bound: &mut Vec<String>) -> Result<(), String> {
    check_node(expr, variable, bound)?;
    cel_kube::rewrite(expr);
    Ok(())
}

fn check_node(expr: &mut IdedExpr, variable: &str, bound: &mut Vec<String>) -> Result<(), String> {
    match &mut expr.expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) => {
            if name == variable || bound.iter().any(|b| b == name) {
                Ok(())
            } else {
                Err(format!(
                    "undeclared reference to {name:?} (this expression sees only {variable:?})"
                ))
            }
        }
        Expr::Select(select) => {
            if let Some(plain) = unescape(&select.field) {
                select.field = plain;
            }
            check(&mut select.operand, variable, bound)
        }
        Expr::Call(call) => {
            let name = function_name(call, variable, bound);
            if !SUPPORTED_FUNCTIONS.contains(&name.as_str()) {
                return Err(format!(
                    "function {name:?} is not supported by authproxy's CEL evaluator \
                     (see the README's CEL table)"
                ));
            }
            if name == "_?._" {
                if let Some(IdedExpr {
                    expr: Expr::Literal(LiteralValue::String(field)),
                    ..
                }) = call.args.get_mut(1)
                {
                    if let Some(plain) = unescape(field) {
                        *field = CelString::from(plain);
                    }
                }
            }
            if name.starts_with("optional.") {
                // `optional` is a namespace, not a variable.
            } else if let Some(target) = &mut call.target {
                check(target, variable, bound)?;
            }
            for arg in &mut call.args {
                check(arg, variable, bound)?;
            }
            Ok(())
        }
        Expr::Comprehension(comp) => {
            check(&mut comp.iter_range, variable, bound)?;
            if variable == "claims" && cel_kube::is_a_claim(&comp.iter_range) {
                return Err(
                    "compilation failed: expression of type 'any' cannot be range of a \
                     comprehension (must be list, map, or dynamic): a claim's type is any \
                     (select a field of it, or split it, first)"
                        .into(),
                );
            }
            check(&mut comp.accu_init, variable, bound)?;
            let depth = bound.len();
            bound.push(comp.iter_var.clone());
            if let Some(second) = &comp.iter_var2 {
                bound.push(second.clone());
            }
            bound.push(comp.accu_var.clone());
            let result = check(&mut comp.loop_cond, variable, bound)
                .and_then(|()| check(&mut comp.loop_step, variable, bound))
                .and_then(|()| check(&mut comp.result, variable, bound));
            bound.truncate(depth);
            result
        }
        Expr::List(list) => list
            .elements
            .iter_mut()
            .try_for_each(|e| check(e, variable, bound)),
        Expr::Map(map) => map
            .entries
            .iter_mut()
            .try_for_each(|entry| match &mut entry.expr {
                EntryExpr::MapEntry(e) => {
                    check(&mut e.key, variable, bound)?;
                    check(&mut e.value, variable, bound)
                }
                EntryExpr::StructField(_) => Err("message construction is not supported".into()),
            }),
        Expr::Struct(s) => Err(format!(
            "message construction ({}{{...}}) is not supported",
            s.type_name
        )),
    }
}

/// The function a call names: `optional.none()` parses as a call of `none`
/// on the identifier `optional`.
fn function_name(call: &CallExpr, variable: &str, bound: &[String]) -> String {
    if let Some(target) = &call.target {
        if let Expr::Ident(namespace) = &target.expr {
            if namespace != variable && !bound.iter().any(|b| b == namespace) {
                return format!("{namespace}.{}", call.func_name);
            }
        }
    }
    call.func_name.clone()
}

const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// kube's unescaping of field names (`__dot__` `.`, `__dash__` `-`,
/// `__slash__` `/`, `__underscores__` `__`, `__<keyword>__` `<keyword>`):
/// `Some` only when `name` holds escapes and all are valid, as kube reads it.
pub fn unescape(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = name;
    let mut changed = false;
    while let Some(start) = rest.find("__") {
        let after = &rest[start + 2..];
        let end = after.find('_').filter(|&e| e > 0);
        match end {
            Some(e) if after[e..].starts_with("__") => {
                let contents = &after[..e];
                let plain = match contents {
                    "underscores" => "__",
                    "dot" => ".",
                    "dash" => "-",
                    "slash" => "/",
                    keyword if RESERVED.contains(&keyword) => {
                        if name.len() != keyword.len() + 4 {
                            return None;
                        }
                        keyword
                    }
                    _ => return None,
                };
                out.push_str(&rest[..start]);
                out.push_str(plain);
                rest = &after[e + 2..];
                changed = true;
            }
            _ => {
                out.push_str(&rest[..start + 1]);
                rest = &rest[start + 1..];
            }
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

impl Expression {
    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads `claims.<field>` (as a field or an
    /// optional field), the test kube applies for its `email_verified` rule.
    pub fn reads_claim(&self, field: &str) -> bool {
        reads(&self.expr, "claims", field)
    }

    /// Evaluates against `value`, bound to the expression's variable.
    pub fn evaluate(&self, value: &Value) -> Result<Value, String> {
        let mut context = Context::with_env(Arc::clone(env()));
        context.add_variable_from_value(self.variable.name(), value.clone());
        Value::resolve(&self.expr, &context).map_err(|e| {
            // kube's wording starts lower-case ("no such key: hd").
            let mut text = one_line(&e.to_string());
            if let Some(first) = text.get(..1) {
                text = first.to_ascii_lowercase() + &text[1..];
            }
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            text
        })
    }
}

impl Expression {
    /// Whether `result`, what this expression gave for `value`, is a list
    /// straight from `split()`: kube's reading of a groups or extra result
    /// refuses one (a Go `[]string`, where it takes the lists that claims,
    /// literals and macros make), so the proxy refuses it too. Only `split`
    /// calls in the expression's result position (its top, or a branch of
    /// `?:`) can give one; each is evaluated again and compared.
    pub fn is_split_list(&self, result: &Value, value: &Value) -> bool {
        if !matches!(result, Value::List(_)) {
            return false;
        }
        let mut splits = Vec::new();
        result_splits(&self.expr, &mut splits);
        if splits.is_empty() {
            return false;
        }
        let mut context = Context::with_env(Arc::clone(env()));
        context.add_variable_from_value(self.variable.name(), value.clone());
        splits
            .iter()
            .any(|split| Value::resolve(split, &context).is_ok_and(|v| &v == result))
    }
}

/// The `split` calls whose list would be the expression's result.
fn result_splits<'a>(expr: &'a IdedExpr, out: &mut Vec<&'a IdedExpr>) {
    if let Expr::Call(call) = &expr.expr {
        match call.func_name.as_str() {
            "_?_:_" if call.args.len() == 3 => {
                result_splits(&call.args[1], out);
                result_splits(&call.args[2], out);
            }
            "split" if call.target.is_some() => out.push(expr),
            _ => {}
        }
    }
}

fn is_ident(expr: &IdedExpr, name: &str) -> bool {
    matches!(&expr.expr, Expr::Ident(n) if n == name)
}

fn reads(expr: &IdedExpr, operand: &str, field: &str) -> bool {
    match &expr.expr {
        Expr::Select(s) => {
            (is_ident(&s.operand, operand) && s.field == field) || reads(&s.operand, operand, field)
        }
        Expr::Call(call) => {
            let optional_select = (call.func_name == "_?._"
                || call.func_name == cel_kube::OPTIONAL_SELECT)
                && call.args.len() == 2
                && is_ident(&call.args[0], operand)
                && matches!(&call.args[1].expr, Expr::Literal(LiteralValue::String(s)) if s.inner() == field);
            optional_select
                || call.args.iter().any(|a| reads(a, operand, field))
                || call
                    .target
                    .as_ref()
                    .is_some_and(|t| reads(t, operand, field))
        }
        Expr::List(list) => list.elements.iter().any(|e| reads(e, operand, field)),
        Expr::Map(map) => map.entries.iter().any(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => {
                reads(&e.key, operand, field) || reads(&e.value, operand, field)
            }
            EntryExpr::StructField(f) => reads(&f.value, operand, field),
        }),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .iter()
        .any(|e| reads(e, operand, field)),
        _ => false,
    }
}

/// A JSON value as kube hands it to CEL: numbers are doubles.
pub fn json_to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Json::Object(map) => claims_to_cel(map),
    }
}

/// The `claims` variable.
pub fn claims_to_cel(claims: &Map<String, Json>) -> Value {
    let map: HashMap<Key, Value> = claims
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
        .collect();
    Value::Map(CelMap { map: Arc::new(map) })
}

fn strings(items: &[String]) -> Value {
    Value::List(Arc::new(
        items
            .iter()
            .map(|s| Value::String(Arc::new(s.clone())))
            .collect(),
    ))
}

/// The `user` variable: `username`, `uid` (empty when unset), `groups` and
/// `extra`, always present, as in kube.
pub fn user_to_cel(user: &UserInfo) -> Value {
    let key = |k: &str| Key::String(Arc::new(k.to_owned()));
    let extra: HashMap<Key, Value> = user
        .extra
        .iter()
        .map(|(k, v)| (key(k), strings(v)))
        .collect();
    let map = HashMap::from([
        (
            key("username"),
            Value::String(Arc::new(user.username.clone())),
        ),
        (
            key("uid"),
            Value::String(Arc::new(user.uid.clone().unwrap_or_default())),
        ),
        (key("groups"), strings(&user.groups)),
        (
            key("extra"),
            Value::Map(CelMap {
                map: Arc::new(extra),
            }),
        ),
    ]);
    Value::Map(CelMap { map: Arc::new(map) })
}

/// A username or uid result: must be a string.
pub fn to_string(value: Value) -> Result<String, &'static str> {
    match value {
        Value::String(s) => Ok(Arc::unwrap_or_clone(s)),
        _ => Err("must return a string"),
    }
}

/// A groups or extra result, as kube reads it: a string or a list of
/// strings; empty strings are dropped, `null` is none.
pub fn to_string_list(value: Value) -> Result<Vec<String>, &'static str> {
    const WRONG: &str = "must return a string or a list of strings";
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Arc::unwrap_or_clone(s)]),
        Value::List(items) => items
            .iter()
            .filter(|v| !matches!(v, Value::String(s) if s.is_empty()))
            .map(|v| match v {
                Value::String(s) => Ok(s.to_string()),
                _ => Err(WRONG),
            })
            .collect(),
        _ => Err(WRONG),
    }
}

/// A validation rule's result: must be a bool.
pub fn to_bool(value: Value) -> Result<bool, &'static str> {
    match value {
        Value::Bool(b) => Ok(b),
        _ => Err("validation expression must return a boolean"),
    }
}
