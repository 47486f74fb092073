import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
inputs = ["$DATA/s2/S2_B03.tif", "$DATA/s2/S2_B08.tif"]
names = ["green", "nir"]
output = rs.band_calc(
    input_raster_list=inputs,
    output_path="$DATA/out/calc_rerun/index.tif",
    expression_string='"green" + "nir"',
    input_name_list=names,
)
print(output.check)
# the same output again, with another expression: Remotior replaces it
output = rs.band_calc(
    input_raster_list=inputs,
    output_path="$DATA/out/calc_rerun/index.tif",
    expression_string='("green" - "nir") / ("green" + "nir")',
    input_name_list=names,
)
print(output.check)
print(output.paths)
rs.close()
