//! Optional field selection (`claims.?org.team`) as kube-apiserver's CEL
//! evaluates it.
//!
//! kube's claims are JSON, so a claim may hold anything. In an optional
//! chain, kube's CEL gives `optional.none()` for a field of a value that is
//! no map at all (null, a number, a bool, a string) and for a field a map
//! lacks, and refuses a field of a list. The `cel` crate errs on the first
//! and gives none on the second, so every field selection of an optional
//! chain (`x.?f`, and `.f` after one) is compiled into a call of
//! [`FUNCTION`], which selects as kube does.

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue, SelectExpr};
use cel::common::types::{CelOptional, CelString, Kind, DYN_TYPE, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

/// The function optional field selections are compiled into (a name no
/// expression can spell).
pub(super) const FUNCTION: &str = "@kube_optional_select";

/// Adds [`FUNCTION`] to `env`.
pub(super) fn register(env: &mut Env) -> Result<(), String> {
    env.add_overload(
        FUNCTION,
        "kube_optional_select",
        vec![DYN_TYPE, STRING_TYPE],
        optional_select,
    )
    .map_err(|e| format!("{e:?}"))
}

/// `target.?field`, where `target` may itself be an optional.
fn optional_select<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [target, field] = <[CowVal<'b, 'v>; 2]>::try_from(args)
        .map_err(|_| ExecutionError::function_error("_?._", "takes a value and a field"))?;
    let none = || Ok(CowVal::owned(CelOptional::none()));
    let value = match target.downcast_ref::<CelOptional>() {
        Some(optional) => match optional.option() {
            Some(value) => value,
            None => return none(),
        },
        None => &*target,
    };
    match value.get_type().kind() {
        Kind::Map => match value.as_indexer().map(|map| map.get(&*field)) {
            Some(Ok(found)) => Ok(CowVal::owned(CelOptional::of(found.into_owned()))),
            _ => none(),
        },
        Kind::List => Err(ExecutionError::function_error(
            "_?._",
            "a list has no fields",
        )),
        _ => none(),
    }
}

/// Whether `expr` yields an optional of a field selection chain.
fn is_optional_chain(expr: &IdedExpr) -> bool {
    matches!(&expr.expr, Expr::Call(call) if call.func_name == FUNCTION || call.func_name == "_[?_]")
}

/// Rewrites one node after its children were checked: `_?._(x, "f")`, and
/// `x.f` where `x` is an optional chain, become [`FUNCTION`] calls.
pub(super) fn rewrite(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Call(call) if call.func_name == "_?._" => call.func_name = FUNCTION.to_owned(),
        Expr::Select(select) if !select.test && is_optional_chain(&select.operand) => {
            let SelectExpr { operand, field, .. } = std::mem::take(select);
            expr.expr = Expr::Call(CallExpr {
                func_name: FUNCTION.to_owned(),
                target: None,
                args: vec![
                    *operand,
                    IdedExpr {
                        id: expr.id,
                        expr: Expr::Literal(LiteralValue::String(CelString::from(field))),
                    },
                ],
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::cel::{claims_to_cel, compile, Value, Variable};
    use serde_json::json;

    fn eval(source: &str, claims: serde_json::Value) -> Result<Value, String> {
        let claims = claims_to_cel(claims.as_object().unwrap());
        compile(source, Variable::Claims).unwrap().evaluate(&claims)
    }

    #[test]
    fn fields_of_non_maps_are_none_and_fields_of_lists_refused_as_in_kube() {
        let team = r#"claims.?org.team.orValue("none")"#;
        for org in [json!(5), json!(null), json!("x"), json!(true), json!({})] {
            let got = eval(team, json!({ "org": org.clone() }));
            assert_eq!(got, Ok(Value::from("none")), "org {org}");
        }
        assert_eq!(eval(team, json!({})), Ok(Value::from("none")));
        let got = eval(team, json!({"org": {"team": "a"}}));
        assert_eq!(got, Ok(Value::from("a")));
        assert!(eval(team, json!({"org": ["a"]})).is_err());
        let optional = r#"claims.?org.?team.orValue("none")"#;
        assert_eq!(eval(optional, json!({"org": 5})), Ok(Value::from("none")));
        assert!(eval(optional, json!({"org": [1]})).is_err());
        let deep = r#"claims.?a.b.c.orValue("none")"#;
        let got = eval(deep, json!({"a": {"b": {"c": "x"}}}));
        assert_eq!(got, Ok(Value::from("x")));
        assert_eq!(eval(deep, json!({"a": {"b": 1}})), Ok(Value::from("none")));
    }
}
