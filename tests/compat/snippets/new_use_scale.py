import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    output_path="$DATA/out/new_use_scale/ndvi_int16.tif",
    expression_string='("nir" - "red") / ("nir" + "red")',
    input_name_list=["nir", "red"],
    output_datatype="Int16",
    use_scale=0.0001,
    use_offset=0,
)
print(output.check)
print(output.paths)
rs.close()
